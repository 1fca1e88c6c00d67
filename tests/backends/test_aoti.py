"""The AOTInductor backend (``--backend aoti``) on CPU: parity with the ONNX engine and the eager
model, greedy tokens equal to HF's, the runtime's Engine interface, and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from steerc.engine_format import MANIFEST_FILE
from steerc.errors import EngineError
from steerc.runtime.engine import Engine
from steerc.runtime.generate import SamplingParams, decode_one_token, generate, prefill
from steerc.runtime.steer_bias import SteerBias


@pytest.fixture(scope="module")
def aoti_engine(aoti_text_engine):
    out, result = aoti_text_engine  # compiled once per session (tests/conftest.py), also by the CLI test
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / MANIFEST_FILE).read_text())


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def test_manifest_lists_package_and_self_check(aoti_engine):
    folder, manifest = aoti_engine
    entry = manifest["backends"]["aoti"]
    assert entry["device"] == "cpu" and (folder / entry["package"]).is_file()
    assert entry["package"] in manifest["files"]  # hashed like every other file
    check = manifest["verify"]["aoti"]
    assert check["prefill_zero_bias_rel_err"] <= 1e-4 and check["decode_steered_rel_err"] <= 1e-4


def _steering(engine, length, seed=3):
    g = engine.geometry
    rng = np.random.default_rng(seed)
    return SteerBias(np.where(rng.random((g.num_layers, g.num_heads, length)) < 0.5, np.log(0.05), 0.0).astype(np.float32))


@pytest.mark.parametrize("shape", [(1, 9), (3, 6)])  # (batch, prompt length): shapes other than the traced (2, 3 + 5)
def test_prefill_and_steered_decode_match_onnx(aoti_engine, shape):
    folder, _ = aoti_engine
    onnx_engine, aoti = Engine.load(folder), Engine.load(folder, backend="aoti")
    assert aoti.backend == "aoti"
    B, S = shape
    ids = np.random.default_rng(0).integers(0, onnx_engine.geometry.vocab_size, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[0, :2] = 0  # a left-padded row
    steering = _steering(onnx_engine, S + 4)
    tokens = np.random.default_rng(1).integers(0, onnx_engine.geometry.vocab_size, (4, B))  # the same decode inputs for both
    results = []
    for engine in (onnx_engine, aoti):
        logits, cache = prefill(engine, ids, mask, engine.new_cache(B), steering=None)  # [B, V]
        steps, step_mask = [], mask
        for token in tokens:
            step_mask = np.concatenate([step_mask, np.ones((B, 1), np.int64)], 1)
            step_logits, cache = decode_one_token(engine, token, step_mask, cache, steering=steering)
            steps.append(step_logits)
        results.append((logits, steps, cache))
    (l_onnx, s_onnx, c_onnx), (l_aoti, s_aoti, c_aoti) = results
    assert _rel(l_aoti, l_onnx) <= 1e-4
    for a, o in zip(s_aoti, s_onnx):
        assert _rel(a, o) <= 1e-4
    keep = np.concatenate([mask, np.ones((B, 4), np.int64)], 1).astype(bool)
    for a, o in zip(c_aoti.flat(), c_onnx.flat()):
        assert _rel(a.transpose(0, 2, 1, 3)[keep], o.transpose(0, 2, 1, 3)[keep]) <= 1e-4
    # The steering reached the compiled graph: the same decode unsteered differs.
    plain_logits, plain_cache = prefill(aoti, ids, mask, aoti.new_cache(B), steering=None)
    unsteered, _ = decode_one_token(aoti, tokens[0], np.concatenate([mask, np.ones((B, 1), np.int64)], 1), plain_cache, steering=None)
    assert np.abs(unsteered - s_aoti[0]).max() > 1e-3


def test_greedy_tokens_equal_hf(aoti_engine, tiny_text_folder):
    from transformers import AutoModelForCausalLM

    folder, _ = aoti_engine
    engine = Engine.load(folder, backend="aoti")
    prompt = np.array([[5, 17, 99, 3, 42, 7]])
    ours = [int(t[0]) for t in generate(engine, prompt, max_new_tokens=12, sampling=SamplingParams(temperature=0.0), stop_token_ids=set())]
    model = AutoModelForCausalLM.from_pretrained(tiny_text_folder).eval()
    with torch.no_grad():
        hf = model.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, prompt.shape[1]:].tolist()
    assert ours == hf


def test_missing_package_and_wrong_device_are_refused(tiny_engine, aoti_engine):
    with pytest.raises(EngineError, match="--backend aoti"):
        Engine.load(tiny_engine, backend="aoti")  # compiled without a package
    with pytest.raises(EngineError, match="built for cpu"):
        Engine.load(aoti_engine[0], device="cuda", backend="aoti")


def test_corrupt_package_is_refused(aoti_engine, tmp_path):
    folder = tmp_path / "engine"
    shutil.copytree(aoti_engine[0], folder)
    package = folder / json.loads((folder / MANIFEST_FILE).read_text())["backends"]["aoti"]["package"]
    package.write_bytes(package.read_bytes()[:1000])
    with pytest.raises(EngineError, match="model.pt2"):
        Engine.load(folder, backend="aoti")
    with pytest.raises(EngineError, match="not a loadable AOTInductor package"):
        Engine.load(folder, backend="aoti", check_files=False)
