"""``steerc compile --weights int8|int4``: MatMulNBits weights in both graphs, one weight file,
parity against the full-precision engine within the scheme's tolerance, and bad settings."""

import json

import numpy as np
import pytest
from cli_process import run_cli
from tiny_models import tiny_model

from steerc.backends.onnx import op_counts
from steerc.build import compile_engine
from steerc.build.verify import WEIGHT_TOLERANCE
from steerc.runtime.engine import Engine
from steerc.runtime.generate import SamplingParams, decode_one_token, generate, prefill
from steerc.runtime.steer_bias import SteerBias
from steerc.settings import CompileSettings

SETTINGS = dict(max_seq_len=64, max_batch=4)


def steerc(*args):
    return run_cli(*args, timeout=600)


@pytest.fixture(scope="module")
def engines(tiny_folder, compiled_engine):
    """The tiny Llama compiled with full (the session's tiny engine), int8 and int4 weights."""
    return {weights: compiled_engine(tiny_folder, **SETTINGS, weights=weights) for weights in ("full", "int8", "int4")}


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_both_graphs_use_matmulnbits_from_one_weight_file(engines, scheme):
    folder = engines[scheme]
    manifest = json.loads((folder / "steerc.json").read_text())
    w = manifest["weights"]
    assert w["scheme"] == scheme and w["bits"] == {"int8": 8, "int4": 4}[scheme] and w["matmuls"] > 0
    assert w["method"] == {"int8": "rtn", "int4": "minmax"}[scheme]  # what --weights picks by default
    assert w["data_bytes_after"] < w["data_bytes_before"]
    for graph in ("model.onnx", "analysis.onnx"):
        counts = op_counts(folder / graph)
        assert counts.get("com.microsoft::MatMulNBits", 0) == w["kernels"] <= w["matmuls"]  # minmax fuses q/k/v and gate/up
    assert not (folder / "analysis.onnx.data").exists() and "analysis.onnx.data" not in manifest["files"]
    assert manifest["verify"]["tolerance"] == WEIGHT_TOLERANCE[scheme]
    assert f"{scheme} MatMulNBits" in steerc("inspect", str(folder)).stdout


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_steered_decode_is_close_to_full_precision(engines, scheme):
    full, quant = Engine.load(engines["full"]), Engine.load(engines[scheme])
    g = full.geometry
    B, S = 2, 9
    ids = np.random.default_rng(0).integers(0, g.vocab_size, (B, S))
    mask = np.ones((B, S + 1), np.int64)
    steering = SteerBias(np.where(np.random.default_rng(1).random((g.num_layers, g.num_heads, S + 1)) < 0.5, np.log(0.05), 0.0).astype(np.float32))
    results = []
    for engine in (full, quant):
        _, cache = prefill(engine, ids, mask[:, :S], engine.new_cache(B))
        logits, _ = decode_one_token(engine, ids[:, -1], mask, cache, steering=steering)
        results.append(logits)
    err = np.abs(results[1] - results[0]).max() / max(1.0, np.abs(results[0]).max())
    assert 0 < err <= WEIGHT_TOLERANCE[scheme]  # quantized (not identical), within the scheme's tolerance


def test_int8_greedy_tokens_equal_full_precision(engines):
    prompt = np.array([[5, 17, 99, 3, 42, 7]])
    tokens = {w: [int(t[0]) for t in generate(Engine.load(engines[w]), prompt, max_new_tokens=10, sampling=SamplingParams(), stop_token_ids=set())]
              for w in ("full", "int8")}
    assert tokens["int8"] == tokens["full"]


def gguf_like(model):
    """Put every projection weight on a Q4_1 grid (blocks of 32 inputs, fp16 scale and
    minimum), as transformers loads a Q4_1 GGUF file."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.shape[1] % 32 == 0:
                w = module.weight.view(module.weight.shape[0], -1, 32)
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
                d = ((hi - lo) / 15).half().float()
                m = lo.half().float()
                module.weight.copy_((torch.round((w - m) / d).clamp(0, 15) * d + m).view_as(module.weight))
    return model


def test_int4_minmax_rebuilds_gguf_weights(tmp_path):
    """A model whose weights came from a Q4_1 GGUF: int4 minmax stores them exactly, so the int4
    engine's greedy tokens are the full-precision engine's and its logits differ only by the
    kernel's int8 activations; rtn int4 re-rounds every weight and is further off."""
    folder = tmp_path / "gguf"
    gguf_like(tiny_model("llama")).save_pretrained(folder)
    engines = {}
    for name, kwargs in {"full": {}, "minmax": {"weights": "int4"}, "rtn": {"weights": "int4", "weight_method": "rtn"}}.items():
        manifest = compile_engine(str(folder), tmp_path / name, CompileSettings(**SETTINGS, **kwargs, importance=False))  # no analysis graph: faster
        engines[name] = Engine.load(tmp_path / name)
    assert manifest["weights"]["method"] == "rtn" and json.loads((tmp_path / "minmax" / "steerc.json").read_text())["weights"]["max_error"] <= 1e-6
    ids = np.random.default_rng(0).integers(0, 128, (1, 12))
    logits = {n: prefill(e, ids, np.ones((1, 12), np.int64), e.new_cache(1))[0] for n, e in engines.items()}
    err = {n: np.abs(logits[n] - logits["full"]).max() for n in ("minmax", "rtn")}
    assert err["minmax"] < err["rtn"] / 2
    prompt = np.array([[5, 17, 99, 3, 42, 7]])
    tokens = {n: [int(t[0]) for t in generate(engines[n], prompt, max_new_tokens=10, sampling=SamplingParams(), stop_token_ids=set())] for n in ("full", "minmax")}
    assert tokens["minmax"] == tokens["full"]


def test_other_architecture_quantizes(tmp_path):
    folder = tmp_path / "qwen2"
    tiny_model("qwen2").save_pretrained(folder)
    manifest = compile_engine(str(folder), tmp_path / "e", CompileSettings(**SETTINGS, weights="int4", weight_block=16, weight_symmetric=False))
    assert manifest["weights"]["block_size"] == 16 and manifest["weights"]["symmetric"] is False and manifest["weights"]["method"] == "rtn"


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": "int2"}, "weights must be one of"),
    ({"weights": "int4", "weight_block": 24}, "power of two"),
    ({"weights": "int4", "target": "tensorrt", "dtype": "fp16"}, "TensorRT"),
    ({"weights": "int8", "backend": "aoti"}, "ONNX engine only"),
    ({"weights": "int4", "dtype": "bf16"}, "bf16"),
    ({"weights": "int4", "weight_method": "gptq"}, "weight_method must be one of"),
    ({"weights": "int4", "weight_method": "minmax", "weight_symmetric": False}, "drop one of them"),
])
def test_bad_weight_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompileSettings(**kwargs)


def test_contradicting_weights_and_dtype_is_one_line(tiny_folder, tmp_path):
    result = steerc("compile", str(tiny_folder), "-o", str(tmp_path / "e"), "--weights", "fp16", "--dtype", "fp32")
    assert result.returncode == 2 and "contradicts" in result.stderr and "Traceback" not in result.stderr
