"""The analysis graph derived from the step graph at the ONNX level: the same importance and
query outputs as the exported analysis program (prefill, chunked prefill, decode, a
left-padded batch), the step graph's own logits and KV, and the fallback where it cannot be
derived."""

import importlib
import json

import numpy as np
import onnx
import pytest
from tiny_models import tiny_model

from steerc.build import compile_engine, read_manifest
from steerc.passes.onnx.derive_analysis import derive_analysis_graph
from steerc.runtime.engine import Engine
from steerc.settings import CompileSettings

SETTINGS = dict(max_seq_len=64, max_batch=4)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_folder, compiled_engine):
    """The tiny Llama with its analysis graph derived (the default: the session's tiny engine) and exported."""
    root = tmp_path_factory.mktemp("derive")
    derived_folder = compiled_engine(tiny_folder, **SETTINGS)
    derived = read_manifest(derived_folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.import_module("steerc.passes.onnx.derive_analysis"), "derive_analysis_graph", lambda *a: "disabled by the test")
        exported = compile_engine(str(tiny_folder), root / "exported", CompileSettings(**SETTINGS))
    assert derived["compile_seconds"]["export_graphs"]["analysis_from"] == "step graph"
    assert exported["compile_seconds"]["export_graphs"]["analysis_from"] == "analysis program"
    return Engine.load(derived_folder), Engine.load(root / "exported")


def analyze_all(engine, ids, mask, chunk):
    """Prefill ``ids`` in chunks through the analysis graph, then one decode step; every output."""
    g = engine.geometry
    B, S = ids.shape
    cache, outs = engine.new_cache(B), []
    bias_rng = np.random.default_rng(3)
    for start in range(0, S, chunk):
        end = min(S, start + chunk)
        m = mask[:, :end]
        positions = np.maximum(np.cumsum(m, 1) - 1, 0)[:, start:end]
        bias = bias_rng.normal(0, 1, (B, g.num_layers, g.num_heads, end)).astype(np.float32)
        logits, cache, importance, queries = engine.analyze(ids[:, start:end], positions, m, cache, bias, queries=True)
        outs += [logits, importance, queries, *cache.flat()]
    return outs


@pytest.mark.parametrize("chunk", [12, 5])
def test_same_outputs_as_the_exported_analysis_graph(engines, chunk):
    derived, exported = engines
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, (2, 12))
    mask = np.ones((2, 12), np.int64)
    mask[1, :4] = 0  # left padding
    for got, want in zip(analyze_all(derived, ids, mask, chunk), analyze_all(exported, ids, mask, chunk)):
        if got.shape != want.shape:  # logits: derived from a --logits last step graph, the final position only
            assert got.shape == (*want.shape[:1], 1, *want.shape[2:])
            want = want[:, -1:]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_logits_and_kv_are_the_step_graphs(engines):
    derived, _ = engines
    g = derived.geometry
    ids = np.random.default_rng(1).integers(0, 128, (1, 7))
    mask, positions = np.ones((1, 7), np.int64), np.arange(7)[None]
    bias = np.random.default_rng(2).normal(0, 1, (1, g.num_layers, g.num_heads, 7)).astype(np.float32)
    step_logits, step_cache = derived.forward(ids, positions, mask, derived.new_cache(1), bias)
    logits, cache, _ = derived.analyze(ids, positions, mask, derived.new_cache(1), bias)
    np.testing.assert_array_equal(logits, step_logits)
    for a, b in zip(cache.flat(), step_cache.flat()):
        np.testing.assert_array_equal(a, b)


def test_derived_graph_structure(engines):
    derived, _ = engines
    proto = onnx.load(str(derived.folder / "analysis.onnx"), load_external_data=False)
    modes = [a.i for n in proto.graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "qk_matmul_output_mode"]
    assert modes == [3] * derived.geometry.num_layers
    assert [o.name for o in proto.graph.output][-2:] == ["attn_importance", "attn_queries"]
    assert not (derived.folder / "analysis.onnx.data").exists()
    manifest = json.loads((derived.folder / "steerc.json").read_text())
    assert manifest["analysis"]["data"] == "model.onnx.data"


def test_eager_attention_falls_back_to_the_export(tmp_path):
    folder = tmp_path / "m"
    tiny_model("llama").save_pretrained(folder)
    manifest = compile_engine(str(folder), tmp_path / "e", CompileSettings(**SETTINGS, attn_implementation="eager"))
    assert manifest["compile_seconds"]["export_graphs"]["analysis_from"] == "analysis program"
    step = tmp_path / "e" / "model.onnx"
    outputs = [type("Spec", (), {"name": n, "dims": []})() for n in [*(o.name for o in onnx.load(str(step), load_external_data=False).graph.output), "attn_importance"]]
    why = derive_analysis_graph(step, tmp_path / "e" / "again.onnx", 2, outputs)
    assert why is not None and "no fused Attention node" in why and not (tmp_path / "e" / "again.onnx").exists()
