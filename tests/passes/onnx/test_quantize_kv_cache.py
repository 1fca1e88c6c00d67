"""``quantize_kv_cache`` (``--kv-cache int8``): GroupQueryAttention's int8 cache with calibrated per-channel scales.

The int8 engine is compared with the fp32-cache engine of the same checkpoint (the int8 rounding is
the only difference), and its two KV paths with each other: a float :class:`KVCache` quantized into
buffers call by call, and int8 buffers kept across calls, must give the same logits (a value
quantized once comes back to the same int8).
"""

import shutil

import numpy as np
import onnx
import pytest

from steerc.errors import EngineError
from steerc.passes.onnx.quantize_kv_cache import SCALES_FILE, calibration_ids, load_kv_scales, rewrite_int8_cache
from steerc.runtime import Engine, SteerBias, generate, prefill
from steerc.runtime.kv_buffers import quantize

SETTINGS = dict(max_seq_len=64, max_batch=4, kv="in-place", attention_op="group-query")


@pytest.fixture(scope="module")
def int8_folder(tiny_folder, compiled_engine):
    return compiled_engine(tiny_folder, kv_cache="int8", **SETTINGS)


@pytest.fixture(scope="module")
def engines(int8_folder, tiny_folder, compiled_engine):
    return Engine.load(int8_folder), Engine.load(compiled_engine(tiny_folder, **SETTINGS))


def _ids(batch=1, length=11, seed=0):
    return np.random.default_rng(seed).integers(0, 128, (batch, length)).astype(np.int64)


def test_manifest_graph_and_scales(engines, int8_folder):
    int8, _ = engines
    entry = int8.manifest["kv_cache"]
    assert entry["dtype"] == "int8" and entry["per"] == "channel" and entry["scales"] == SCALES_FILE and entry["layers"] == 2
    assert int8.manifest["inputs"][3]["dtype"] == "int8" and int8.kv_dtype == np.float32  # buffers int8, the KV steerc hands around float
    proto = onnx.load(str(int8_folder / "model.onnx"), load_external_data=False)
    for node in proto.graph.node:
        if node.op_type == "GroupQueryAttention":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["kv_cache_bit_width"] == 8 and attrs["k_quant_type"] == b"PER_CHANNEL" and node.input[12].endswith("k_scale")
    scales = load_kv_scales(int8_folder, 2)
    assert len(scales) == 4 and all(s.shape == (2, 16) and (s > 0).all() for s in scales)
    assert int8.session.scales is not None and engines[1].manifest["kv_cache"] == {"dtype": "fp32"}


def test_close_to_the_fp32_cache(engines):
    int8, fp32 = engines
    ids = _ids(2, 13)
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # left padding
    got, _ = prefill(int8, ids, mask, int8.buffers_for(int8.new_cache(2), ids.shape[1]), chunk=5)
    want, _ = prefill(fp32, ids, mask, fp32.buffers_for(fp32.new_cache(2), ids.shape[1]), chunk=5)
    spread = float(want.max() - want.min())
    err = float(np.abs(got - want).max())
    assert 0 < err < 0.05 * spread, (err, spread)  # the rounding shows, and stays small


def test_float_cache_path_equals_int8_buffers(engines):
    int8, _ = engines
    ids = _ids(1, 17, seed=3)
    mask = np.ones_like(ids)
    via_cache, cache = prefill(int8, ids, mask, int8.new_cache(1), chunk=4)  # each call: float past -> int8 -> float present
    via_buffers, buffers = prefill(int8, ids, mask, int8.buffers_for(int8.new_cache(1), 20), chunk=4)
    np.testing.assert_allclose(via_cache, via_buffers, atol=1e-6, rtol=0)
    np.testing.assert_allclose(cache.flat()[0], buffers.to_cache().flat()[0], atol=1e-7, rtol=0)
    chunked = [int(t[0]) for t in generate(int8, ids, max_new_tokens=12, stop_token_ids=set(), prefill_chunk=4)]
    whole = [int(t[0]) for t in generate(int8, ids, max_new_tokens=12, stop_token_ids=set())]
    assert len(chunked) == 12 and chunked == whole


def test_steering_moves_the_int8_engine_as_the_fp32_one(engines):
    int8, fp32 = engines
    ids = _ids(1, 12, seed=5)
    mask = np.ones_like(ids)
    g = int8.geometry
    bias = SteerBias(np.random.default_rng(1).normal(0, 2, (g.num_layers, g.num_heads, 12)).astype(np.float32))
    plain, _ = prefill(int8, ids, mask, int8.new_cache(1))
    steered, _ = prefill(int8, ids, mask, int8.new_cache(1), bias)
    reference, _ = prefill(fp32, ids, mask, fp32.new_cache(1), bias)
    moved = float(np.abs(steered - plain).max())
    assert moved > 10 * float(np.abs(steered - reference).max())  # the bias moves the logits far more than the rounding does


def test_quantize_round_trip():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.01, 0.2, (2, 4)).astype(np.float32)
    q = rng.integers(-128, 128, (1, 2, 5, 4)).astype(np.int8)
    assert (quantize(q * scale[None, :, None, :], scale) == q).all()
    assert quantize(np.full((1, 2, 1, 4), 1e6, np.float32), scale).max() == 127  # saturated as ONNX Runtime does, not wrapped
    assert quantize(np.full((1, 2, 1, 4), -1e6, np.float32), scale).min() == -128


def test_calibration_ids():
    assert len(calibration_ids(None, 100, length=32)) == 32  # no tokenizer: random ids below the vocabulary

    class Words:
        def __call__(self, text):
            return {"input_ids": list(range(len(text.split())))}

    ids = calibration_ids(Words(), 100, length=10_000)
    assert 300 < len(ids) < 1000  # the shipped text


def test_refusals(engines, int8_folder, tmp_path, exported_onnx):
    with pytest.raises(EngineError, match="no GroupQueryAttention"):
        rewrite_int8_cache(onnx.load(str(exported_onnx("llama")), load_external_data=False), [])
    proto = onnx.load(str(int8_folder / "model.onnx"), load_external_data=False)
    with pytest.raises(EngineError, match="quantized already"):
        rewrite_int8_cache(proto, load_kv_scales(int8_folder, 2))
    int8, fp32 = engines
    with pytest.raises(EngineError, match="int8 KV cache"):
        int8.forward(_ids(1, 1), np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64), fp32.buffers_for(None, 4),
                     np.zeros((1, 2, 4, 1), np.float32))
    broken = tmp_path / "engine"
    shutil.copytree(int8_folder, broken)
    (broken / SCALES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(EngineError):
        Engine.load(broken)
    with pytest.raises(EngineError, match="unreadable"):
        load_kv_scales(broken, 2)
