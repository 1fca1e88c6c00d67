"""The in-place KV step graph (``--kv in-place``) against today's concat graph on the tiny Llama.

Both engines are compiled from one checkpoint. Logits and KV are compared within 1e-6
(absolute) on real positions: the in-place graph attends over the buffer's capacity with the
unwritten keys masked, so ONNX Runtime's softmax and probs @ V sum over more (zero) terms and
may round differently in the last bit (about 1e-7 here). Greedy tokens must be identical.
"""

import json
import shutil

import numpy as np
import pytest

from steerc.build import compile_engine
from steerc.engine_format import read_manifest, write_manifest
from steerc.errors import EngineError
from steerc.runtime import Engine, KVCache, SteerBias, decode_one_token, generate, prefill
from steerc.runtime.kv_buffers import KVBuffers, round_capacity
from steerc.settings import CompileSettings

ATOL = 1e-6


@pytest.fixture(scope="module", params=["standard", "group-query"])
def in_place_folder(request, tiny_folder, tmp_path_factory):
    """Both in-place step graphs: the standard Attention over the padded buffer, and ONNX Runtime's
    GroupQueryAttention (``--attention-op group-query``), which reads only the P+S written keys."""
    out = tmp_path_factory.mktemp(f"tiny-in-place-{request.param}") / "engine"
    compile_engine(str(tiny_folder), out, CompileSettings(max_seq_len=64, max_batch=4, kv="in-place", attention_op=request.param))
    return out


@pytest.fixture(scope="module")
def concat(tiny_engine):
    return Engine.load(tiny_engine)


@pytest.fixture()
def in_place(in_place_folder):
    engine = Engine.load(in_place_folder)
    engine.kv_chunk = 8  # grow the buffers several times within the tiny engine's 64 positions
    return engine


def _padded_batch(seed=0, lengths=(7, 13)):
    """A left-padded batch of 2: ``(ids [2, W], mask [2, W])``."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = rng.integers(0, 128, n)
        mask[i, width - n:] = 1
    return ids, mask


def _close_on_real(got: KVCache, want: KVCache, mask: np.ndarray) -> None:
    """KV equal (within ATOL) on the positions that are real tokens."""
    keys = mask.astype(bool)  # [B, P]
    assert got.length == want.length == mask.shape[1]
    for a, b in zip(got.flat(), want.flat()):
        np.testing.assert_allclose(a.transpose(0, 2, 1, 3)[keys], b.transpose(0, 2, 1, 3)[keys], atol=ATOL, rtol=0)


def test_manifest_and_graph(in_place, concat):
    kv = in_place.manifest["kv"]
    assert in_place.kv_layout == "in-place" and in_place.kv_in_place and kv["buffers"] == 4 and kv["opset"] == 24
    assert in_place.manifest["settings"]["kv"] == "in-place" and in_place.manifest["inputs"][3]["dims"][2] == "kv_capacity"
    assert concat.kv_layout == "concat" and not concat.kv_in_place
    counts = in_place.manifest["backend"]["op_counts"]
    if in_place.manifest["settings"]["attention_op"] == "group-query":  # the op writes the buffers itself
        assert counts["com.microsoft::GroupQueryAttention"] == 2 and "Attention" not in counts and "TensorScatter" not in counts
        assert in_place.manifest["attention"]["op"] == "GroupQueryAttention" and in_place.manifest["attention"]["sites"] == 2
        assert in_place.session.rows_apart
    else:
        assert counts["TensorScatter"] == 4 and counts["Attention"] == 2
        assert in_place.manifest["attention"] == {"op": "Attention", "aligned_rows": True} and not in_place.session.rows_apart
    assert concat.manifest["attention"] == {"op": "Attention", "aligned_rows": False} and in_place.aligned_rows and not concat.aligned_rows
    assert not (in_place.folder / "genai_config.json").exists()  # onnxruntime-genai expects the concat contract


@pytest.mark.parametrize("chunk", [0, 5])
def test_prefill_left_padded_batch_equals_concat(concat, in_place, chunk):
    ids, mask = _padded_batch()
    want_logits, want = prefill(concat, ids, mask, concat.new_cache(2), chunk=chunk)
    got_logits, got = prefill(in_place, ids, mask, in_place.new_cache(2), chunk=chunk)  # KVCache in, KVCache out
    assert isinstance(got, KVCache)
    np.testing.assert_allclose(got_logits, want_logits, atol=ATOL, rtol=0)
    _close_on_real(got, want, mask)
    buffers = in_place.buffers_for(in_place.new_cache(2), 1)
    got_logits, buffers = prefill(in_place, ids, mask, buffers, chunk=chunk)  # buffers in, the same buffers out, grown
    assert isinstance(buffers, KVBuffers) and buffers.length == ids.shape[1] and buffers.capacity == round_capacity(ids.shape[1], 8)
    np.testing.assert_allclose(got_logits, want_logits, atol=ATOL, rtol=0)
    _close_on_real(buffers.to_cache(), want, mask)


def test_chunked_prefill_after_a_cache_equals_concat(concat, in_place):
    ids, mask = _padded_batch(seed=1, lengths=(9, 17))
    head = 6
    _, want = prefill(concat, ids[:, :head], mask[:, :head], concat.new_cache(2))
    before = [a.copy() for a in want.flat()]
    want_logits, want_all = prefill(concat, ids[:, head:], mask, want, chunk=4)
    got_logits, got_all = prefill(in_place, ids[:, head:], mask, want, chunk=4)  # the concat engine's cache, as stored
    assert all(np.array_equal(a, b) for a, b in zip(before, want.flat()))  # the caller's cache is not modified
    np.testing.assert_allclose(got_logits, want_logits, atol=ATOL, rtol=0)
    _close_on_real(got_all, want_all, mask)


def test_decode_steps_equal_concat_while_the_buffers_grow(concat, in_place):
    ids, mask = _padded_batch(seed=2)
    steering = SteerBias(np.random.default_rng(3).normal(size=(2, 4, ids.shape[1] + 4)).astype(np.float32))
    logits, cache = prefill(concat, ids, mask, concat.new_cache(2), steering)
    buffers = in_place.buffers_for(cache, ids.shape[1] + 1)
    assert buffers.capacity == 16
    first = buffers.arrays[0]  # held, so a new array cannot reuse its id
    capacities = set()
    for _ in range(25):
        token = logits.argmax(-1)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
        logits, cache = decode_one_token(concat, token, mask, cache, steering)
        got, same = decode_one_token(in_place, token, mask, buffers, steering)
        assert same is buffers and buffers.length == mask.shape[1]
        np.testing.assert_allclose(got, logits, atol=ATOL, rtol=0)
        assert got.argmax(-1).tolist() == logits.argmax(-1).tolist()
        capacities.add(buffers.capacity)
    assert capacities == {16, 24, 32, 40} and buffers.arrays[0] is not first  # grew by chunks of 8, one copy each
    _close_on_real(buffers.to_cache(), cache, mask)


def test_decode_writes_into_the_same_memory(in_place):
    ids, mask = _padded_batch(seed=4)
    buffers = in_place.buffers_for(in_place.new_cache(2), 30)
    pointers = [a.ctypes.data for a in buffers.arrays]
    _, buffers = prefill(in_place, ids, mask, buffers)
    assert [a.ctypes.data for a in buffers.arrays] == pointers  # no reallocation, no copy: the graph wrote into them
    assert all(a[:, :, : ids.shape[1]].any() and not a[:, :, ids.shape[1]:].any() for a in buffers.arrays)


def test_generate_greedy_identical(concat, in_place):
    ids, mask = _padded_batch(seed=5, lengths=(4, 10))
    steering = SteerBias(np.random.default_rng(6).normal(size=(2, 4, 10)).astype(np.float32))
    for kwargs in ({}, {"steering": steering}):
        want = np.stack(list(generate(concat, ids, mask, max_new_tokens=30, stop_token_ids=set(), **kwargs)), 1)
        got = np.stack(list(generate(in_place, ids, mask, max_new_tokens=30, stop_token_ids=set(), prefill_chunk=4, **kwargs)), 1)
        assert got.tolist() == want.tolist()


def test_concat_cache_saved_before_loads_and_continues(concat, in_place, tmp_path):
    ids, mask = _padded_batch(seed=7, lengths=(8,))
    _, cache = prefill(concat, ids, mask, concat.new_cache(1))
    cache.save(tmp_path / "ctx.safetensors")
    loaded, _ = KVCache.load(tmp_path / "ctx.safetensors", keyless=in_place.keyless_layers)
    ask = np.array([[5, 9, 11]])
    want = [int(t[0]) for t in generate(concat, ask, cache=cache, max_new_tokens=12, stop_token_ids=set())]
    got = [int(t[0]) for t in generate(in_place, ask, cache=loaded, max_new_tokens=12, stop_token_ids=set())]
    assert got == want and loaded.length == 8  # generate moved a copy into buffers; the loaded cache is untouched


def test_engine_without_kv_entry_is_concat(tiny_engine, tmp_path, concat):
    """Engines compiled before ``--kv`` existed have no ``kv`` in their manifest (nor in their settings)."""
    old = tmp_path / "old"
    shutil.copytree(tiny_engine, old)
    manifest = read_manifest(old)
    manifest.pop("kv")
    manifest["settings"].pop("kv")
    write_manifest(old, {k: v for k, v in manifest.items() if k not in ("files", "checksum")})
    engine = Engine.load(old)
    assert engine.kv_layout == "concat" and CompileSettings.from_dict(json.loads((old / "steerc.json").read_text())["settings"]).kv == "concat"
    ids, mask = _padded_batch(seed=8)
    got, _ = prefill(engine, ids, mask, engine.new_cache(2))
    want, _ = prefill(concat, ids, mask, concat.new_cache(2))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(EngineError, match="concat KV layout"):
        engine.buffers_for(engine.new_cache(2), 20)


def test_wrong_inputs_are_refused(concat, in_place, in_place_folder):
    ids, mask = _padded_batch(seed=9)
    B, S = ids.shape
    bias = np.zeros((B, 2, 4, S), np.float32)
    buffers = in_place.buffers_for(in_place.new_cache(B), S)
    with pytest.raises(EngineError, match="concat KV layout and takes a KVCache"):
        concat.forward(ids, ids, mask, buffers, bias)
    with pytest.raises(EngineError, match="concat KV layout and takes a KVCache"):
        prefill(concat, ids, mask, buffers)
    with pytest.raises(ValueError, match="inconsistent step shapes"):
        in_place.forward(ids, ids, mask[:, 1:], buffers, bias)
    with pytest.raises(ValueError, match="inconsistent step shapes"):
        in_place.forward(ids[:1], ids[:1], mask[:1], buffers, bias[:1])  # one row against buffers of two
    wrong_heads = KVBuffers.empty(2, B, 1, 16, np.float32, capacity=32)
    with pytest.raises(EngineError, match="does not fit engine"):
        in_place.forward(ids, ids, mask, wrong_heads, bias)
    wrong_dtype = KVBuffers.empty(2, B, 2, 16, np.float16, capacity=32)
    with pytest.raises(EngineError, match="does not fit engine"):
        in_place.forward(ids, ids, mask, wrong_dtype, bias)
    with pytest.raises(EngineError, match="layers do not fit"):
        in_place.forward(ids, ids, mask, KVBuffers.empty(3, B, 2, 16, np.float32, capacity=32), bias)
    keyless = KVCache([None, np.zeros((1, 2, 3, 16), np.float32)], [np.zeros((1, 2, 3, 16), np.float32)] * 2)
    with pytest.raises(EngineError, match="layout mismatch"):
        in_place.buffers_for(keyless, 8)
    with pytest.raises(EngineError, match="key and a value cache for every layer"):
        KVBuffers.from_cache(keyless)
    for kwargs in ({"backend": "aoti"}, {"device": "cuda"}):
        with pytest.raises(EngineError, match="only the onnx backend on the CPU"):
            Engine.load(in_place_folder, **kwargs)
    with pytest.raises(ValueError, match="outside the capacity"):
        KVBuffers([np.zeros((1, 2, 4, 16), np.float32)] * 2, 5)


def test_analysis_takes_buffers(concat, in_place):
    ids, mask = _padded_batch(seed=10)
    bias = np.zeros((2, 2, 4, ids.shape[1]), np.float32)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    buffers = in_place.buffers_for(in_place.new_cache(2), ids.shape[1])
    _, cache, got = in_place.analyze(ids, positions, mask, buffers, bias)
    _, _, want = concat.analyze(ids, positions, mask, concat.new_cache(2), bias)
    assert isinstance(cache, KVCache) and buffers.length == 0  # the analysis graph keeps the concat layout
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"kv": "paged"}, "kv must be one of"),
    ({"kv": "in-place", "share_attention": ((0, 1),)}, "shared attention"),
    ({"kv": "in-place", "target": "tensorrt", "dtype": "fp16"}, "--target onnx and --backend onnx"),
    ({"kv": "in-place", "backend": "aoti"}, "--target onnx and --backend onnx"),
    ({"kv": "in-place", "opset": 20}, "opset 23"),
])
def test_settings_refuse(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompileSettings(**kwargs)


def _cli(*args):
    from cli_process import run_cli

    return run_cli(*args, timeout=600)


def test_cli_inspect_and_invalid_combination(in_place_folder, tiny_folder, tmp_path):
    result = _cli("inspect", str(in_place_folder))
    assert result.returncode == 0 and "kv        in place: 4 buffers [B, Hkv, kv_capacity, D]" in result.stdout, result.stderr
    result = _cli("compile", str(tiny_folder), "-o", str(tmp_path / "e"), "--kv", "in-place", "--share-attention", "0-1")
    assert result.returncode == 2 and "invalid option: kv in-place does not support shared attention" in result.stderr and not (tmp_path / "e").exists()


def test_selector_takes_buffers(concat, in_place):
    ids, mask = _padded_batch(seed=11)
    bias = np.zeros((2, 2, 4, ids.shape[1]), np.float32)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    buffers = in_place.buffers_for(in_place.new_cache(2), ids.shape[1])
    got = in_place.select_scores(ids, positions, mask, buffers)
    _, _, want = concat.analyze(ids, positions, mask, concat.new_cache(2), bias)
    assert in_place.selector_layers == 1 and buffers.length == 0  # derived before kv_in_place: the concat layout
    np.testing.assert_allclose(got, want[:, :1], atol=ATOL, rtol=0)
