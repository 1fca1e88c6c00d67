"""Compacted stored contexts (``keep``): the kept tokens, exactness against the full cache with the
dropped keys masked, every method on a compacted context, bit-identical reloads from disk and
Redis, and the refusals (bad keep values, sliding-window engines)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.generate import prefill
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.answer import Steerer
from steerc.steering.compaction import check_positions_preserved, kept_context_tokens, kept_count
from steerc.steering.config import SteerConfig
from steerc.steering.prepared import PreparedContext
from steerc.stores import DiskStore, MemoryStore

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
QUESTION = "Which team won Super Bowl 50?"


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def test_keep_values_are_validated():
    for bad in (0, -0.5, 1.5, float("inf"), True):
        with pytest.raises(ValueError, match="keep"):
            SteerConfig(keep=bad)
    assert SteerConfig(keep=0.25).compacts and not SteerConfig().compacts and SteerConfig(keep=300).keep == 300
    assert kept_count(0.25, 100) == 25 and kept_count(40, 100) == 40
    with pytest.raises(ValueError, match="more than the context's 100 tokens"):
        kept_count(101, 100)


def test_kept_tokens_are_sinks_recent_and_the_most_attended_per_observer():
    N = 12
    importance = np.ones((2, 3, N))  # equal summed attention: per observer, later tokens matter more
    importance[:, :, 5] = 50.0
    kept = kept_context_tokens(importance, 0.5, sinks=2, recent=2)
    assert len(kept) == 6 and {0, 1, 10, 11, 5} <= set(kept.tolist())
    assert 9 in kept  # the best of the rest by mean attention received (fewest observers)
    assert kept_context_tokens(importance, 0.1, sinks=2, recent=2).tolist() == [0, 1, 10, 11]  # fixed ones exceed keep: all kept


def test_a_compacted_context_equals_the_full_cache_with_the_dropped_keys_masked(engine):
    store = MemoryStore(1 << 30)
    s = Steerer(engine, SteerConfig(method="none", keep=0.5), store)
    s.answer(CONTEXT, QUESTION, max_new_tokens=2)
    compacted = s.last_context[0]
    full = Steerer(engine, SteerConfig(method="none"), MemoryStore(1 << 30))
    full.answer(CONTEXT, QUESTION, max_new_tokens=1)
    plain = full.last_context[0]
    Nh, N = len(plain.head_ids), len(plain.context_ids)
    positions = compacted.positions
    assert positions[:Nh].tolist() == list(range(Nh)) and len(positions) == Nh + round(0.5 * N)
    assert compacted.position_offset == Nh + N - len(positions)
    for got, want in zip(compacted.kv.flat(), plain.kv.take(positions).flat()):
        np.testing.assert_array_equal(got, want)
    query_ids = s.layout.query_ids(s.config.prefixes[0], QUESTION)
    S = len(query_ids)
    got, _ = prefill(engine, query_ids[None], np.ones((1, len(positions) + S), np.int64), compacted.kv, position_offset=compacted.position_offset)
    g = engine.geometry
    bias = np.full((g.num_layers, g.num_heads, Nh + N), -1e9, np.float32)
    bias[..., positions] = 0.0
    want, _ = prefill(engine, query_ids[None], np.ones((1, Nh + N + S), np.int64), plain.kv, SteerBias(bias))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert s.last.token_ids[0] == int(want[0].argmax())
    # Only the compacted entry and its KV (the kept keys only) are stored: nothing of the full context.
    assert set(store._entries) == {compacted.key, compacted.kv_key}  # noqa: SLF001
    assert store.get(compacted.kv_key).meta["length"] == len(positions)


@pytest.mark.parametrize("method, fields", [("query", {"selector": ((1, 0), (1, 3))}), ("qllm", {"block_size": 16, "blocks": 1, "local": 8}),
                                            ("llmsteer", {"top_k": 0.3}), ("pasta", {"highlights": ((0, 60),)}), ("autopasta", {}),
                                            ("llmsteer", {"steer_at": "both"})])
def test_every_method_runs_on_a_compacted_context(engine, method, fields):
    s = Steerer(engine, SteerConfig(method=method, keep=0.5, **fields), MemoryStore(1 << 30))
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=2)
    prepared, plan = s.last_context[0], s.last_plan
    assert prepared.positions is not None and answer.token_ids
    K = prepared.kv.length
    assert plan.kv.length <= K or plan.query_ids is not None
    if plan.steering is not None and plan.kv is prepared.kv:
        assert plan.steering.length == K  # the bias covers the stored keys, not the dropped ones
    if method == "pasta":  # the highlighted tokens that survived keep their place; dropped ones are simply gone
        assert plan.steering is not None


def _same(a: PreparedContext, b: PreparedContext) -> None:
    assert a.key == b.key
    np.testing.assert_array_equal(a.positions, b.positions)
    for x, y in zip(a.kv.flat(), b.kv.flat()):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_a_compacted_entry_reloads_from_disk_bit_identically(engine, tmp_path):
    config = SteerConfig(method="none", keep=0.25)
    first = Steerer(engine, config, DiskStore(tmp_path))
    made, tier = first.prepare(CONTEXT)
    again, tier2 = Steerer(engine, config, DiskStore(tmp_path)).prepare(CONTEXT)
    assert (tier, tier2) == ("miss", "disk")
    _same(made, again)


def test_a_compacted_entry_reloads_from_redis_bit_identically(engine, redis_server):
    import time

    from steerc.stores.redis import RedisStore

    prefix = f"test:{time.monotonic_ns()}:"
    config = SteerConfig(method="query", keep=0.5, selector=((1, 0),))
    made, tier = Steerer(engine, config, RedisStore(redis_server.url, prefix=prefix)).prepare(CONTEXT)
    again, tier2 = Steerer(engine, config, RedisStore(redis_server.url, prefix=prefix)).prepare(CONTEXT)
    assert (tier, tier2) == ("miss", "redis")
    _same(made, again)
    np.testing.assert_array_equal(made.extras["calibration"], again.extras["calibration"])


def test_keep_above_the_context_length_is_refused_before_any_work(engine):
    s = Steerer(engine, SteerConfig(method="none", keep=5000), MemoryStore(1 << 30))
    with pytest.raises(ValueError, match="more than the context's"):
        s.prepare(CONTEXT)


def test_sliding_window_engines_refuse_dropped_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"]}))
    fake = SimpleNamespace(folder=tmp_path, max_seq_len=2048)
    with pytest.raises(ValueError, match="sliding attention window of 512"):
        check_positions_preserved(fake, "--keep 0.5")
    fake.max_seq_len = 512  # the window covers the whole engine: nothing moves
    check_positions_preserved(fake, "--keep 0.5")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": False}))
    check_positions_preserved(SimpleNamespace(folder=tmp_path, max_seq_len=2048), "--keep 0.5")
