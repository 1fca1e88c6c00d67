"""Automatic prefix caching (``PrefixCache``): which prefix a prompt gets, what the budget keeps,
and that a prompt prefilled after a cached prefix equals its full prefill."""

import numpy as np
import pytest

from steerc.runtime import Engine, generate, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.prefix_cache import PrefixCache


def _kv(n: int, value: float = 0.0, layers: int = 2) -> KVCache:
    """A batch-1 cache of ``n`` positions whose position p holds ``value + p`` (so slices are checkable)."""
    a = (value + np.arange(n, dtype=np.float32))[None, None, :, None] * np.ones((1, 2, 1, 4), np.float32)  # [1, 2, n, 4]
    return KVCache([a.copy() for _ in range(layers)], [a.copy() for _ in range(layers)])


def _ids(*parts) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.int64) for p in parts])


BASE = np.arange(100, 140)  # 40 tokens


def test_longest_common_prefix_is_returned_as_a_copy():
    cache = PrefixCache(1 << 20, min_tokens=4)
    assert cache.put(_ids(BASE, [1, 2, 3]), _kv(43))
    assert cache.put(_ids(BASE[:10], [9] * 20), _kv(30, 1000.0))
    hit = cache.lookup(_ids(BASE, [1, 2, 7, 7]))
    assert hit.tokens == 42  # BASE + [1, 2]
    assert hit.kv.length == 42 and np.array_equal(hit.kv.values[0][0, 0, :, 0], np.arange(42))
    hit.kv.keys[0][...] = -1  # the caller may write into it
    again = cache.lookup(_ids(BASE, [1, 2, 3, 4, 5]))
    assert again.tokens == 43 and again.kv.keys[0].min() == 0
    other = cache.lookup(_ids(BASE[:10], [9] * 5, [4, 4]))
    assert other.tokens == 15 and other.kv.values[1][0, 0, 0, 0] == 1000.0
    assert (cache.hits, cache.misses, cache.reused_tokens) == (3, 0, 42 + 43 + 15)


def test_the_last_two_tokens_are_always_prefilled_and_short_prefixes_miss():
    cache = PrefixCache(1 << 20, min_tokens=8)
    ids = _ids(BASE)
    cache.put(ids, _kv(len(ids)))
    assert cache.lookup(ids).tokens == len(ids) - 2  # the same prompt again: its last two tokens are prefilled (one-token calls round otherwise)
    assert cache.lookup(_ids(BASE[:-1], [7])).tokens == len(ids) - 2  # only the last token differs
    assert cache.lookup(_ids(BASE[:7], [5] * 20)) is None  # 7 common tokens < min_tokens
    assert cache.lookup(BASE[:8]) is None  # no longer than min_tokens: not worth a lookup
    assert cache.misses == 2


def test_scopes_never_share():
    cache = PrefixCache(1 << 20, min_tokens=4)
    cache.put(_ids(BASE), _kv(40), scope="tenant-a")
    assert cache.lookup(_ids(BASE, [1, 2]), scope="tenant-b") is None
    assert cache.lookup(_ids(BASE, [1, 2])) is None  # the shared scope is a scope too
    assert cache.lookup(_ids(BASE, [1, 2]), scope="tenant-a").tokens == 40


def test_budget_evicts_least_recently_used():
    one = _kv(40).nbytes
    cache = PrefixCache(2 * one + 10, min_tokens=4)
    a, b, c = (_ids([k] * 5, BASE[:35]) for k in (1, 2, 3))
    cache.put(a, _kv(40)), cache.put(b, _kv(40))
    assert cache.lookup(_ids(a, [0])) is not None  # a is now the most recently used
    cache.put(c, _kv(40))
    assert len(cache) == 2 and cache.nbytes == 2 * one and cache.evictions == 1
    assert cache.lookup(_ids(b, [0])) is None and cache.lookup(_ids(a, [0])) is not None
    assert not cache.put(_ids(BASE, BASE, BASE), _kv(120))  # larger than the whole budget: not kept
    assert not PrefixCache(0).put(a, _kv(40)) and PrefixCache(0).lookup(_ids(a, [0])) is None  # 0 turns it off


def test_extended_prompts_replace_their_prefixes():
    cache = PrefixCache(1 << 20, min_tokens=4)
    cache.put(_ids(BASE[:20]), _kv(20))
    cache.put(_ids(BASE), _kv(40))  # a conversation's next turn: covers the first
    assert len(cache) == 1 and cache.nbytes == _kv(40).nbytes
    cache.put(_ids(BASE[:30]), _kv(30))  # a prefix of a kept prompt: nothing new to keep
    assert len(cache) == 1 and cache.lookup(_ids(BASE, [1, 2])).tokens == 40


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(-1)
    with pytest.raises(ValueError, match="min_tokens"):
        PrefixCache(10, min_tokens=0)
    with pytest.raises(ValueError, match="exactly the prompt's 40 positions"):
        PrefixCache(1 << 20).put(_ids(BASE), _kv(39))


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return Engine.load(tiny_engine)


def test_prefill_after_a_cached_prefix_equals_the_full_prefill(engine):
    rng = np.random.default_rng(0)
    shared = rng.integers(3, engine.geometry.vocab_size, 30)
    first, second = _ids(shared, rng.integers(3, 100, 7)), _ids(shared, rng.integers(3, 100, 9))
    cache = PrefixCache(1 << 26, min_tokens=8)
    _, kv = prefill(engine, first[None], np.ones((1, len(first)), np.int64), engine.new_cache(1), chunk=16)
    cache.put(first, kv)
    hit = cache.lookup(second)
    assert hit.tokens == 30
    tail = second[None, hit.tokens:]
    logits, kv_after = prefill(engine, tail, np.ones((1, len(second)), np.int64), hit.kv, chunk=16)
    full_logits, full_kv = prefill(engine, second[None], np.ones((1, len(second)), np.int64), engine.new_cache(1), chunk=16)
    np.testing.assert_allclose(logits[:, -1], full_logits[:, -1], atol=1e-4)
    for a, b in zip(kv_after.flat(), full_kv.flat()):
        np.testing.assert_allclose(a, b, atol=1e-4)
    from_prefix = [int(t[0]) for t in generate(engine, tail, cache=hit.kv, max_new_tokens=8)]
    from_scratch = [int(t[0]) for t in generate(engine, second[None], max_new_tokens=8)]
    assert from_prefix == from_scratch


def test_the_same_prompt_again_gives_the_full_prefills_logits_bit_for_bit(engine):
    """Its last two tokens are prefilled as one call of the prompt kind (a one-token call would take
    the decode kind, which rounds otherwise: on int4 engines enough to flip a greedy token)."""
    ids = np.random.default_rng(4).integers(3, engine.geometry.vocab_size, 33)
    mask = np.ones((1, len(ids)), np.int64)
    cache = PrefixCache(1 << 26, min_tokens=8)
    full_logits, kv = prefill(engine, ids[None], mask, engine.new_cache(1))
    cache.put(ids, kv)
    hit = cache.lookup(ids)
    assert hit.tokens == len(ids) - 2
    logits, _ = prefill(engine, ids[None, hit.tokens:], mask, hit.kv)
    assert np.array_equal(logits, full_logits)


def test_a_kept_prompt_is_not_changed_by_its_decode_on_an_in_place_engine(tiny_folder, compiled_engine):
    """The server keeps a prompt's KV as its prefill returned it and hands the same arrays to the
    decode batch: the batch copies a row in, so decoding into in-place buffers leaves them as kept."""
    from steerc.runtime.decode_batch import BatchRow, DecodeBatch

    engine = Engine.load(compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, kv="in-place"))
    ids = np.random.default_rng(2).integers(3, engine.geometry.vocab_size, 24)
    cache = PrefixCache(1 << 26, min_tokens=8)
    logits, kv = prefill(engine, ids[None], np.ones((1, len(ids)), np.int64), engine.new_cache(1), chunk=8)
    cache.put(ids, kv)
    before = [a.copy() for a in kv.flat()]
    batch, tokens = DecodeBatch(engine, 2), []
    batch.add(BatchRow(logits[0], kv, emit=tokens.append, max_new_tokens=10))
    while batch.rows:
        batch.step()
    assert len(tokens) == 10
    hit = cache.lookup(np.concatenate([ids, [5, 6]]))
    assert hit.tokens == len(ids)
    for kept, was, got in zip(kv.flat(), before, hit.kv.flat()):
        np.testing.assert_array_equal(kept, was)
        np.testing.assert_array_equal(got, was)
