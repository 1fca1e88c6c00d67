"""One in-memory copy of the weights for the step and analysis sessions (``Engine.load(share=...)``,
``SharedWeights``): both sessions are given the same memory-mapped OrtValues of the one weight
file, their outputs equal unshared sessions' exactly, and the engine folder still verifies."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from steerc.backends import onnx as onnx_backend
from steerc.backends.onnx import create_session
from steerc.engine_format import read_manifest
from steerc.runtime.engine import Engine


def outputs(engine: Engine) -> list[np.ndarray]:
    """An analysis prefill (logits, KV, importance) and a steered step on its cache."""
    g, B, S = engine.geometry, 2, 7
    rng = np.random.default_rng(0)
    ids = rng.integers(0, g.vocab_size, (B, S))
    mask = np.ones((B, S), np.int64)
    positions = np.tile(np.arange(S), (B, 1))
    bias = np.zeros((B, g.num_layers, g.num_heads, S), np.float32)
    logits, cache, importance = engine.analyze(ids, positions, mask, engine.new_cache(B), bias)
    step_bias = rng.normal(size=(B, g.num_layers, g.num_heads, S + 1)).astype(np.float32)
    step_logits, step_cache = engine.forward(ids[:, -1:], np.full((B, 1), S), np.ones((B, S + 1), np.int64), cache, step_bias)
    return [logits, *cache.flat(), importance, step_logits, *step_cache.flat()]


def assert_equal(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


def unshared(folder: Path, prepack: bool) -> Engine:
    """Each session loads its own weights (ORT's own external-data loading)."""
    engine = Engine.load(folder, share="off")
    engine.session = create_session(folder / engine.manifest["backend"]["model"], prepack=prepack)
    engine._analysis = create_session(folder / engine.manifest["analysis"]["model"], prepack=prepack)
    return engine


def mappings(path: Path) -> int:
    return sum(line.rstrip().endswith(str(path.resolve())) for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.fixture(scope="module")
def engine_copy(tiny_engine, tmp_path_factory):
    """A private copy of the tiny engine: its weight file's mappings are this module's alone."""
    import shutil

    out = tmp_path_factory.mktemp("shared-weights") / "engine"
    shutil.copytree(tiny_engine, out)
    return out


def test_both_sessions_run_from_one_mapping_of_one_weight_file(engine_copy, monkeypatch):
    given = {}
    original = onnx_backend.SharedWeights.initializers

    def record(self, model):
        given[Path(model).name] = values = original(self, model)
        return values

    monkeypatch.setattr(onnx_backend.SharedWeights, "initializers", record)
    engine = Engine.load(engine_copy, share="weights")
    outputs(engine)  # opens the analysis session
    manifest = engine.manifest
    data = engine_copy / manifest["backend"]["data"]
    assert manifest["analysis"]["data"] == manifest["backend"]["data"]
    step, analysis = given[manifest["backend"]["model"]], given[manifest["analysis"]["model"]]
    assert step and analysis and engine.weights.files == [data.resolve()]
    # the same OrtValue objects (the graphs name them differently), pointing into the one mapping
    assert {id(v) for v in step.values()} == {id(v) for v in analysis.values()}
    mapped = engine.weights._files[data.resolve()]
    base = mapped.ctypes.data
    assert all(base <= v.data_ptr() < base + mapped.size for v in step.values())
    assert 0 < engine.weights.nbytes <= data.stat().st_size
    assert mappings(data) == 1  # ONNX Runtime did not map (or read) the file itself
    assert engine.session._steerc_weights is engine.weights and engine._analysis._steerc_weights is engine.weights


def test_shared_outputs_equal_unshared(engine_copy):
    off = outputs(Engine.load(engine_copy, share="off"))
    assert_equal(outputs(Engine.load(engine_copy, share="arena")), off)
    # one copy means no per-session pre-packed weights: equal to unshared sessions without them,
    # and within float rounding of pre-packed ones (another GEMM kernel)
    weights = outputs(Engine.load(engine_copy, share="weights"))
    assert_equal(weights, outputs(unshared(engine_copy, prepack=False)))
    for a, b in zip(weights, off):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_engine_folder_verifies_with_one_weight_file(engine_copy):
    outputs(Engine.load(engine_copy, share="weights"))
    manifest = read_manifest(engine_copy, check_files=True)  # every file's sha256, the weights read through the mapping
    assert [f for f in manifest["files"] if f.endswith(".data")] == [manifest["backend"]["data"]]
    assert sorted(p.name for p in engine_copy.glob("*.data")) == [manifest["backend"]["data"]]


def test_share_mode_default_env_and_bad_value(engine_copy, monkeypatch):
    monkeypatch.delenv("STEERC_SHARE", raising=False)
    engine = Engine.load(engine_copy)
    assert engine.share == "arena" and engine.weights is None
    monkeypatch.setenv("STEERC_SHARE", "off")
    assert Engine.load(engine_copy).share == "off"
    with pytest.raises(ValueError, match="share must be one of"):
        Engine.load(engine_copy, share="both")


def test_matmulnbits_engine_falls_back_to_the_shared_arena(tiny_folder, compiled_engine, caplog):
    """int4 weights are pre-packed per session (unpacked, MatMulNBits dequantizes every call):
    ``weights`` keeps them per session and shares the arena; outputs are exact."""
    int4 = compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, weights="int4")  # the int4 engine of test_quantize
    manifest = json.loads((int4 / "steerc.json").read_text())
    assert "com.microsoft::MatMulNBits" in manifest["backend"]["op_counts"]
    with caplog.at_level(logging.WARNING, logger="steerc.runtime.engine"):
        engine = Engine.load(int4, share="weights")
    assert engine.share == "arena" and engine.weights is None and "MatMulNBits" in caplog.text
    assert_equal(outputs(engine), outputs(Engine.load(int4, share="off")))
