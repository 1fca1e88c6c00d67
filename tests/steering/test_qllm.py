"""``qllm`` block retrieval on the tiny text engine: the hard mask is exactly the engine on a KV
cut down to the kept blocks (positions preserved), the soft mask lands where documented, the
answer-only scope, what is stored, and the refusal of an engine without query vectors."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from steerc.errors import EngineError
from steerc.runtime import Engine
from steerc.runtime.generate import prefill
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.answer import Steerer
from steerc.steering.blocks import block_bounds, block_scores, kept_tokens
from steerc.steering.config import SteerConfig
from steerc.steering.keys import plain_key
from steerc.steering.methods.qllm import score_call
from steerc.steering.profiles import selector_heads
from steerc.stores import MemoryStore

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
QUESTION = "Which team won Super Bowl 50?"
FIELDS = dict(method="qllm", block_size=16, blocks=2, initial=4, local=8, retrieve_for="question")
MASKED = -1e9  # what "dropped" means for the engine fed the whole cache


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def _run(engine, **fields):
    s = Steerer(engine, SteerConfig(**{**FIELDS, **fields}), MemoryStore(1 << 30))
    s.answer(CONTEXT, QUESTION, max_new_tokens=3)
    prepared, plan = s.last_context[0], s.last_plan
    query_ids = s.layout.query_ids(s.config.prefixes[0], QUESTION)
    return s, prepared, plan, query_ids


def _dropped_bias(engine, keep_keys: np.ndarray, total: int) -> SteerBias:
    g = engine.geometry
    bias = np.zeros((g.num_layers, g.num_heads, total), np.float32)
    bias[..., : len(keep_keys)] = np.where(keep_keys, 0.0, MASKED)
    return SteerBias(bias)


def test_plan_keeps_the_best_scoring_blocks(engine):
    s, prepared, plan, query_ids = _run(engine)
    N = len(prepared.context_ids)
    queries, _, _ = score_call(engine, prepared.kv, query_ids)
    pairs = selector_heads(engine)  # no shipped profile for the tiny engine: the middle layers' heads
    bounds = block_bounds(N, 16)
    np.testing.assert_array_equal(prepared.extras["block_bounds"], bounds)
    keep, chosen = kept_tokens(block_scores(queries, prepared.extras["block_keys"], pairs), bounds, N, 2, 4, 8)
    assert [e.unit for e in plan.evidence] == chosen and len(chosen) == 2
    assert (plan.selected == keep).all() and 0 < keep.sum() < N


def test_hard_mask_equals_the_engine_on_a_physically_cut_cache(engine):
    s, prepared, plan, query_ids = _run(engine)
    Nh, N = len(prepared.head_ids), len(prepared.context_ids)
    keep_keys = np.concatenate([np.ones(Nh, bool), plan.selected[0]])  # [Nh + N]
    kept = np.flatnonzero(keep_keys)
    assert plan.steering is None and plan.position_offset == Nh + N - len(kept)
    for got, want in zip(plan.kv.flat(), prepared.kv.take(kept).flat()):
        np.testing.assert_array_equal(got, want)
    S = len(query_ids)
    cut, _ = prefill(engine, query_ids[None], np.ones((1, plan.kv.length + S), np.int64), plan.kv, position_offset=plan.position_offset)
    masked, _ = prefill(engine, query_ids[None], np.ones((1, Nh + N + S), np.int64), prepared.kv, _dropped_bias(engine, keep_keys, Nh + N))
    np.testing.assert_allclose(cut, masked, atol=2e-5, rtol=0)
    # The answer streamed by the Steerer is the greedy continuation of those logits.
    assert s.last.token_ids[0] == int(masked[0].argmax())


def test_soft_mask_puts_log_alpha_on_the_dropped_keys(engine):
    _, prepared, plan, _ = _run(engine, block_mask="soft", alpha=0.25)
    Nh = len(prepared.head_ids)
    bias = plan.steering.bias  # [L, H, Nh + N]
    assert plan.kv is prepared.kv
    dropped = ~np.concatenate([np.ones(Nh, bool), plan.selected[0]])
    assert np.allclose(bias[..., dropped], np.log(0.25)) and (bias[..., ~dropped] == 0).all()


def test_answer_scope_reads_the_question_once_over_everything(engine):
    _, prepared, plan, query_ids = _run(engine, retrieve_for="answer")
    Nh, N, S = len(prepared.head_ids), len(prepared.context_ids), len(query_ids)
    assert plan.query_ids.tolist() == query_ids[-1:].tolist()
    keep_keys = np.concatenate([np.ones(Nh, bool), plan.selected[0], np.ones(S - 1, bool)])
    assert plan.kv.length == int(keep_keys.sum()) and plan.position_offset == Nh + N + S - 1 - plan.kv.length
    got, _ = prefill(engine, query_ids[None, -1:], np.ones((1, plan.kv.length + 1), np.int64), plan.kv, position_offset=plan.position_offset)
    # Reference: the question body over the whole context, then its last token with the dropped blocks masked.
    _, body = prefill(engine, query_ids[None, :-1], np.ones((1, Nh + N + S - 1), np.int64), prepared.kv)
    want, _ = prefill(engine, query_ids[None, -1:], np.ones((1, Nh + N + S), np.int64), body, _dropped_bias(engine, keep_keys, Nh + N + S - 1))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_the_block_index_is_stored_once_beside_the_shared_plain_kv(engine):
    store = MemoryStore(1 << 30)
    s = Steerer(engine, SteerConfig(**FIELDS), store)
    s.answer(CONTEXT, QUESTION, max_new_tokens=1)
    prepared = s.last_context[0]
    assert s.last.cache == "miss" and store.get(plain_key(engine, prepared.head_ids, prepared.context_ids)) is not None
    index = store.get(prepared.key)
    assert set(index.tensors) == {"block_bounds", "block_keys", "representatives"}
    s.answer(CONTEXT, "Where was the game played?", max_new_tokens=1)
    assert s.last.cache == "memory"  # a reused context: only the question's own work
    # Another block size is another index over the same plain KV.
    other = Steerer(engine, replace(s.config, block_size=32), store)
    other.answer(CONTEXT, QUESTION, max_new_tokens=1)
    assert other.last_context[0].key != prepared.key


def test_an_engine_without_query_vectors_is_refused_with_the_fix(engine, monkeypatch):
    monkeypatch.setattr(type(engine), "has_queries", property(lambda self: False))
    s = Steerer(engine, SteerConfig(**FIELDS), MemoryStore(1 << 30))
    with pytest.raises(EngineError, match="recompile"):
        s.answer(CONTEXT, QUESTION, max_new_tokens=1)


def test_qllm_settings_are_validated():
    for bad in ({"blocks": 0}, {"block_size": 2}, {"local": -1}, {"block_mask": "medium"}, {"retrieve_for": "context"}, {"steer_at": "both"}):
        with pytest.raises(ValueError):
            SteerConfig(**{**FIELDS, **bad})
    assert SteerConfig.from_json(SteerConfig(**FIELDS).to_json()) == SteerConfig(**FIELDS)
