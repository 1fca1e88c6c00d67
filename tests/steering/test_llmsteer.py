"""LLMSteer at token level on the tiny engine: importance prefill, selection, steer_at modes,
store reuse (bitwise), corruption recovery, and reuse equal to a full prefill."""

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.generate import prefill
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import prepare_context as prepare_with
from steerc.steering.methods import get_method
from steerc.steering.prepared import PreparedContext
from steerc.steering.selection import importance_prefill, select_tokens, steering_bias, top_k_count, top_k_mask
from steerc.stores import DiskStore, MemoryStore

RNG = np.random.default_rng(0)
HEAD_A = RNG.integers(0, 128, 5)
HEAD_B = RNG.integers(0, 128, 7)
CONTEXT = RNG.integers(0, 128, 30)
QUERY = RNG.integers(0, 128, 6)


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return Engine.load(tiny_engine, threads=1)


def prepare_context(engine, heads, context_ids, config, **kwargs):
    """The token-level preparation with the config's own method."""
    return prepare_with(engine, heads, context_ids, config, method=get_method(config.method), **kwargs)


def _query_logits(engine, prepared: PreparedContext, query=QUERY):
    mask = np.ones((1, prepared.length + len(query)), np.int64)
    logits, _ = prefill(engine, np.asarray(query)[None], mask, prepared.kv, prepared.query_steering())
    return logits


def test_top_k_and_intersection_hand_checked():
    assert top_k_count(0.25, 10) == 3 and top_k_count(4, 10) == 4 and top_k_count(50, 10) == 10 and top_k_count(0.01, 10) == 1
    scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(top_k_mask(scores, 2), [[False, True, True, False, False]])  # tie: earlier token
    a = np.array([[5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5]])
    b = np.array([[5.0, 1, 4, 2, 3], [1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(select_tokens(a, b, 3), [[True, False, True, False, False], [False, False, True, True, True]])


def test_steering_bias_pattern():
    selected = np.array([[True, False, False], [False, True, True]])
    bias = steering_bias(selected, offset=2, total=7, num_heads=3, alpha=0.5, pairs=[(0, 1), (1, 0), (1, 2)])
    log_a = np.float32(np.log(0.5))
    want = np.zeros((2, 3, 7), np.float32)
    want[0, 1, 3:5] = log_a  # layer 0 keeps context token 0 (key 2)
    want[1, 0, 2] = want[1, 2, 2] = log_a  # layer 1 keeps tokens 1, 2
    np.testing.assert_array_equal(bias, want)


def test_importance_prefill_chunks_and_window(engine):
    ids = np.concatenate([HEAD_A, CONTEXT])
    whole, _ = importance_prefill(engine, ids, chunk=64)
    chunked, cache = importance_prefill(engine, ids, chunk=7)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    g = engine.geometry
    np.testing.assert_allclose(whole.sum(-1), np.full((g.num_layers, g.num_heads), len(ids)), rtol=1e-5)  # each row sums to 1
    windowed, windowed_cache = importance_prefill(engine, ids, window=10, chunk=7)
    np.testing.assert_allclose(windowed.sum(-1), np.full((g.num_layers, g.num_heads), 10), rtol=1e-5)  # only the last 10 rows
    assert windowed[..., -10:].sum() < whole[..., -10:].sum() + 1e-4 and not np.allclose(windowed, whole)
    for a, b in zip(cache.flat(), windowed_cache.flat()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_steering_raises_the_attention_share_of_selected_tokens(engine):
    config = SteerConfig(method="llmsteer", alpha=0.1, top_k=0.3, layers=None)  # every layer: the test checks each one
    prepared, _ = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config)
    ids = np.concatenate([HEAD_A, CONTEXT, QUERY])
    total = len(ids)
    bias = prepared.query_steering().for_keys(1, total)[0]  # [L, H, total]; zero on the query keys
    plain, _ = importance_prefill(engine, ids)
    steered, _ = importance_prefill(engine, ids, bias)
    ctx = slice(len(HEAD_A), len(HEAD_A) + len(CONTEXT))
    for layer in range(engine.geometry.num_layers):
        sel = prepared.selected[layer]
        share = lambda imp: imp[layer, :, ctx][:, sel].sum() / imp[layer, :, ctx].sum()  # noqa: E731
        assert share(steered) > share(plain) + 0.1, (layer, share(plain), share(steered))


@pytest.mark.parametrize("steer_at", ["prefill", "decode", "both"])
def test_steer_at_modes(engine, steer_at):
    config = SteerConfig(method="llmsteer", alpha=0.2, top_k=0.25, steer_at=steer_at, layers=[0])  # layer 0 steers what layer 1 caches
    prepared, _ = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config)
    g, Nh, N = engine.geometry, len(HEAD_A), len(CONTEXT)
    assert prepared.selected.shape == (g.num_layers, N) and prepared.selected.sum(1).max() <= top_k_count(0.25, N)
    bias = prepared.bias  # documented pattern: log(alpha) on unselected context keys of steered layers, 0 elsewhere
    np.testing.assert_array_equal(bias[1], 0)  # layer 1 not steered
    np.testing.assert_array_equal(bias[0, :, :Nh], 0)  # the instruction head is never down-weighted
    want = np.where(prepared.selected[0], 0, np.float32(np.log(0.2)))
    np.testing.assert_array_equal(bias[0, :, Nh:], np.broadcast_to(want, (g.num_heads, N)))
    steering = prepared.query_steering()
    plain_kv = prefill(engine, np.concatenate([HEAD_A, CONTEXT])[None], np.ones((1, Nh + N), np.int64), engine.new_cache(1))[1]
    same_as_plain = all(np.allclose(a, b, atol=1e-6) for a, b in zip(prepared.kv.flat(), plain_kv.flat()))
    if steer_at == "decode":
        assert same_as_plain and steering is not None
        np.testing.assert_array_equal(steering.for_keys(1, Nh + N + 4)[0, ..., Nh + N :], 0)  # query / generated keys get 0
    else:
        assert not same_as_plain  # a steered prefill produced the stored KV
        assert (steering is None) == (steer_at == "prefill")


def test_none_reuse_equals_full_prefill(engine):
    prepared, _ = prepare_context(engine, [HEAD_A], CONTEXT, SteerConfig(method="none"))
    assert prepared.query_steering() is None and prepared.importance.shape[0] == 0
    ids = np.concatenate([HEAD_A, CONTEXT, QUERY])
    full, _ = prefill(engine, ids[None], np.ones((1, len(ids)), np.int64), engine.new_cache(1))
    np.testing.assert_allclose(_query_logits(engine, prepared), full, atol=1e-5)


def test_reloaded_from_disk_gives_bitwise_identical_logits(engine, tmp_path):
    config = SteerConfig(method="llmsteer", top_k=0.3, steer_at="both")
    fresh, tier = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config, store=DiskStore(tmp_path))
    assert tier == "miss"
    reloaded, tier = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config, store=DiskStore(tmp_path))
    assert tier == "disk" and reloaded.key == fresh.key
    np.testing.assert_array_equal(reloaded.selected, fresh.selected)
    assert np.array_equal(_query_logits(engine, reloaded), _query_logits(engine, fresh))


def test_keys_differ_by_context_prefix_and_config(engine):
    base = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer"))[0].key
    variants = [
        prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT[:-1], SteerConfig(method="llmsteer"))[0].key,
        prepare_context(engine, [HEAD_B, HEAD_A], CONTEXT, SteerConfig(method="llmsteer"))[0].key,
        prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer", alpha=0.5))[0].key,
        prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer", steer_at="both"))[0].key,
        prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer", layers=[0]))[0].key,
    ]
    assert len({base, *variants}) == 6
    assert prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer"))[0].key == base


@pytest.mark.parametrize("part", ["entry", "kv"])
def test_corrupt_entry_is_detected_and_recomputed(engine, tmp_path, part):
    config = SteerConfig(method="llmsteer", top_k=0.3)
    good, _ = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config, store=DiskStore(tmp_path))
    path = DiskStore(tmp_path).path(good.key if part == "entry" else good.kv_key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte inside the entry's tensors (selection, bias, importance) or the KV's
    path.write_bytes(bytes(data))
    store = DiskStore(tmp_path)
    again, tier = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config, store=store)
    assert tier == "miss" and store.stats.corrupt == 1  # never used: recomputed
    assert np.array_equal(_query_logits(engine, again), _query_logits(engine, good))
    assert prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config, store=DiskStore(tmp_path))[1] == "disk"  # rewritten intact


def test_memory_store_hit_returns_the_same_entry(engine):
    store = MemoryStore(1 << 26)
    first, tier = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer"), store=store)
    second, tier2 = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer"), store=store)
    assert (tier, tier2) == ("miss", "memory") and store.stats.hits == 2  # the entry, then its KV
    assert np.array_equal(_query_logits(engine, first), _query_logits(engine, second))


def test_pasta_uses_the_highlight_on_every_layer(engine):
    highlight = np.zeros(len(CONTEXT), bool)
    highlight[4:9] = True
    prepared, _ = prepare_context(engine, [HEAD_A], CONTEXT, SteerConfig(method="pasta", highlights=((1, 2),), alpha=0.01), highlight=highlight)
    np.testing.assert_array_equal(prepared.selected, np.broadcast_to(highlight, prepared.selected.shape))
    with pytest.raises(ValueError, match="highlight mask"):
        prepare_context(engine, [HEAD_A], CONTEXT, SteerConfig(method="pasta", highlights=((1, 2),)))


def test_context_longer_than_engine_is_refused_before_work(engine):
    from steerc.runtime import ContextTooLongError

    with pytest.raises(ContextTooLongError, match="at most 64"):
        prepare_context(engine, [HEAD_A, HEAD_B], RNG.integers(0, 128, 70), SteerConfig(method="llmsteer"))


def test_new_settings_on_a_known_context_reuse_the_stored_analysis(engine, monkeypatch):
    """The plain KV and the dual-prefix importance are stored once; another alpha / top-k /
    layer set (steer_at decode), none, and pasta then run no prefill, with results equal to
    a fresh computation."""
    store = MemoryStore(1 << 26)
    prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, SteerConfig(method="llmsteer"), store=store)
    calls = []
    for name in ("forward", "analyze"):
        original = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    highlight = np.zeros(len(CONTEXT), bool)
    highlight[3:7] = True
    configs = [(SteerConfig(method="llmsteer", alpha=0.5, top_k=0.4, layers=[0]), None), (SteerConfig(method="none"), None),
               (SteerConfig(method="pasta", highlights=((1, 2),)), highlight)]
    reused = [prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, c, highlight=h, store=store)[0] for c, h in configs]
    assert calls == []
    monkeypatch.undo()
    for (config, h), got in zip(configs, reused):
        fresh, _ = prepare_context(engine, [HEAD_A, HEAD_B], CONTEXT, config, highlight=h)
        np.testing.assert_array_equal(got.selected, fresh.selected)
        np.testing.assert_array_equal(got.bias, fresh.bias)
        np.testing.assert_array_equal(_query_logits(engine, got), _query_logits(engine, fresh))
