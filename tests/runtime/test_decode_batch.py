"""Continuous batching (``DecodeBatch``) against each row decoded alone with ``generate``.

Rows join and leave mid-stream, with different prompt and cache lengths, steering biases,
position offsets, samplers and stop tokens; every row's tokens must equal its solo run, and
one row's bias must not reach another's logits.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from steerc.runtime import Engine, SamplingParams, SteerBias, decode_one_token, generate, prefill
from steerc.runtime.decode_batch import BatchRow, DecodeBatch
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.text import chat_ids

ATOL = 1e-5


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return Engine.load(tiny_engine)


@pytest.fixture(scope="module")
def in_place_engine(tiny_folder, compiled_engine):
    engine = Engine.load(compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, kv="in-place"))
    engine.kv_chunk = 8  # buffers grow several times within 64 positions
    return engine


GQA = dict(max_seq_len=64, max_batch=4, kv="in-place", attention_op="group-query")  # the settings test_quantize_kv_cache compiles too


@pytest.fixture(scope="module")
def gqa_engines(tiny_folder, compiled_engine):
    """``{"group-query": fp32, "group-query-int4": int4 weights}``: GroupQueryAttention engines (left-aligned batch rows)."""
    out = {"group-query": Engine.load(compiled_engine(tiny_folder, **GQA)),
           "group-query-int4": Engine.load(compiled_engine(tiny_folder, weights="int4", **GQA)),
           "group-query-int8-cache": Engine.load(compiled_engine(tiny_folder, kv_cache="int8", **GQA))}
    for engine in out.values():
        engine.kv_chunk = 8
    return out


@dataclass
class Spec:
    """One request: ``context`` tokens already cached (a stored context), then ``prompt``."""

    prompt: int
    seed: int
    joins_at: int = 0
    context: int = 0
    max_new_tokens: int = 10
    steer: float | None = None  # log-alpha on half the context keys
    offset: int = 0
    sampling: SamplingParams = SamplingParams()
    stop: frozenset = frozenset()
    cancel_after: int | None = None

    def ids(self):
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, 128, (1, self.context)), rng.integers(0, 128, (1, self.prompt))

    def steering(self, engine):
        if self.steer is None:
            return None
        g = engine.geometry
        rng = np.random.default_rng(self.seed + 100)
        bias = np.where(rng.random((g.num_layers, g.num_heads, self.context)) < 0.5, self.steer, 0.0).astype(np.float32)  # [L, H, K]
        return SteerBias(bias)

    def cache(self, engine):
        context, _ = self.ids()
        cache = engine.new_cache(1)
        if self.context:
            _, cache = prefill(engine, context, np.ones((1, self.context), np.int64), cache, position_offset=self.offset)
        return cache


def _solo(engine, spec: Spec) -> list[int]:
    _, prompt = spec.ids()
    steps = generate(engine, prompt, cache=spec.cache(engine), steering=spec.steering(engine), max_new_tokens=spec.max_new_tokens,
                     sampling=spec.sampling, stop_token_ids=set(spec.stop), position_offset=spec.offset)
    out = []
    for token in steps:
        out.append(int(token[0]))
        if spec.cancel_after is not None and len(out) == spec.cancel_after:
            break
    return out


def _row(engine, spec: Spec, tokens: list, finishes: list) -> BatchRow:
    _, prompt = spec.ids()
    cache, steering = spec.cache(engine), spec.steering(engine)
    mask = np.ones((1, cache.length + spec.prompt), np.int64)
    logits, cache = prefill(engine, prompt, mask, cache, steering, position_offset=spec.offset)
    return BatchRow(logits[0], cache, emit=tokens.append, finish=finishes.append, max_new_tokens=spec.max_new_tokens, sampling=spec.sampling,
                    steering=steering, stop_token_ids=spec.stop, position_offset=spec.offset)


def _batched(engine, specs: list[Spec], max_rows: int = 4):
    batch = DecodeBatch(engine, max_rows)
    tokens = [[] for _ in specs]
    finishes = [[] for _ in specs]
    rows = {}
    sizes = []
    for step in range(200):
        for i, spec in enumerate(specs):
            if spec.joins_at == step:
                rows[i] = _row(engine, spec, tokens[i], finishes[i])
                batch.add(rows[i])
            if spec.cancel_after is not None and len(tokens[i]) == spec.cancel_after and i in rows:
                rows[i].cancelled = True
        sizes.append(batch.step())
        if not batch.rows and step > max(s.joins_at for s in specs):
            break
    return tokens, finishes, sizes


MIXED = [
    Spec(prompt=5, seed=1, max_new_tokens=14),
    Spec(prompt=11, seed=2, max_new_tokens=8, sampling=SamplingParams(temperature=0.8, seed=3)),
    Spec(prompt=4, seed=3, joins_at=3, context=9, steer=float(np.log(0.05)), max_new_tokens=10),
    Spec(prompt=3, seed=4, joins_at=5, context=6, offset=4, max_new_tokens=6),
    Spec(prompt=7, seed=5, joins_at=9, max_new_tokens=12),  # joins after row 1 left
]


@pytest.mark.parametrize("which", ["concat", "in-place", "group-query", "group-query-int4", "group-query-int8-cache"])
def test_rows_joining_and_leaving_equal_their_solo_runs(engine, in_place_engine, gqa_engines, which):
    eng = {"concat": engine, "in-place": in_place_engine, **gqa_engines}[which]
    assert DecodeBatch(eng).aligned == (which != "concat")  # in-place engines hold their rows left-aligned
    tokens, finishes, sizes = _batched(eng, MIXED)
    for spec, got, fin in zip(MIXED, tokens, finishes):
        assert got == _solo(eng, spec)
        assert fin == ["length"]
    assert max(sizes) == 4 and 1 in sizes  # really batched, and rows really left


@pytest.fixture(scope="module")
def in_place_int4_engine(tiny_folder, compiled_engine):
    engine = Engine.load(compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, kv="in-place", weights="int4"))
    engine.kv_chunk = 8
    return engine


@pytest.mark.parametrize("which", ["in-place", "in-place-int4", "group-query", "group-query-int4", "group-query-int8-cache"])
def test_left_aligned_rows_compute_bit_for_bit_as_alone(in_place_engine, in_place_int4_engine, gqa_engines, which):
    """On an in-place engine the rows start together at 0, each row's keys at the indices they have
    alone (GroupQueryAttention attends to them only; the standard Attention sees the rest masked):
    at every step a row's logits equal, bit for bit, those of the same row decoding alone (a batch
    of one), whatever the other rows' lengths, steering and arrivals."""
    eng = {"in-place": in_place_engine, "in-place-int4": in_place_int4_engine, **gqa_engines}[which]
    specs = [Spec(prompt=5, seed=1, max_new_tokens=9), Spec(prompt=13, seed=2, context=7, steer=float(np.log(0.05)), max_new_tokens=9),
             Spec(prompt=3, seed=3, joins_at=2, max_new_tokens=5)]

    def logits_per_step(group: list[int]) -> dict[int, list[np.ndarray]]:
        batch, seen = DecodeBatch(eng, 4), {i: [] for i in group}
        rows = {}
        for step in range(12):
            for i in group:
                if specs[i].joins_at == step:
                    rows[i] = _row(eng, specs[i], [], [])
                    batch.add(rows[i])
            if not batch.step() and step > 2:
                break
            for i, row in rows.items():
                if row in batch.rows:
                    seen[i].append(row.logits.copy())
        return seen

    together = logits_per_step([0, 1, 2])
    for i in range(len(specs)):
        alone = logits_per_step([i])[i]
        assert len(alone) == len(together[i]) > 2
        for got, want in zip(together[i], alone):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("which", ["in-place", "group-query-int8-cache"])
def test_a_row_joining_with_kv_buffers_equals_one_joining_with_a_kv_cache(in_place_engine, gqa_engines, which):
    """A row may join with its in-place buffers (taken as stored: an int8 cache is not converted)
    or with a float KVCache (quantized once on joining): the same tokens, and the row's buffers
    are not changed by the batch."""
    eng = in_place_engine if which == "in-place" else gqa_engines[which]
    spec = Spec(prompt=6, seed=8, context=5, max_new_tokens=8)
    other = Spec(prompt=9, seed=9, max_new_tokens=8)
    results = []
    for as_buffers in (False, True):
        batch, tokens = DecodeBatch(eng, 4), [[], []]
        rows = [_row(eng, s, t, []) for s, t in zip((spec, other), tokens)]
        if as_buffers:
            rows[0].cache = eng.buffers_for(rows[0].cache, rows[0].cache.length)
            before = [x.copy() for x in rows[0].cache.arrays]
            held = rows[0].cache
        for r in rows:
            batch.add(r)
        while batch.step():
            pass
        if as_buffers:
            assert all(np.array_equal(a, b) for a, b in zip(held.arrays, before))
        results.append(tokens)
    assert results[0] == results[1] and results[0][0] == _solo(eng, spec)


def test_a_row_that_hits_its_stop_token_leaves_and_the_others_go_on(engine):
    plain = Spec(prompt=6, seed=7, max_new_tokens=12)
    stop_at = _solo(engine, plain)[3]
    stopping = Spec(prompt=6, seed=7, max_new_tokens=12, stop=frozenset({stop_at}))
    specs = [stopping, Spec(prompt=9, seed=8, max_new_tokens=12), Spec(prompt=2, seed=9, joins_at=2, max_new_tokens=9, context=5, steer=-2.0)]
    tokens, finishes, _ = _batched(engine, specs)
    assert tokens[0] == _solo(engine, stopping) and tokens[0][-1] == stop_at and len(tokens[0]) <= 4
    assert finishes[0] == ["stop"]
    for spec, got in zip(specs[1:], tokens[1:]):
        assert got == _solo(engine, spec)


def test_a_cancelled_row_leaves_and_the_others_go_on(engine):
    specs = [Spec(prompt=6, seed=10, max_new_tokens=12, cancel_after=3), Spec(prompt=8, seed=11, max_new_tokens=12, context=7, steer=-3.0),
             Spec(prompt=5, seed=12, joins_at=1, max_new_tokens=10)]
    tokens, finishes, _ = _batched(engine, specs)
    assert tokens[0] == _solo(engine, specs[0]) and len(tokens[0]) == 3
    assert finishes[0] == ["cancelled"]
    for spec, got in zip(specs[1:], tokens[1:]):
        assert got == _solo(engine, spec)


def _solo_logits(engine, spec: Spec, tokens: list[int]) -> list[np.ndarray]:
    """The logits a row decodes from, step by step, when it runs alone and is fed ``tokens``."""
    _, prompt = spec.ids()
    cache, steering = spec.cache(engine), spec.steering(engine)
    mask = np.ones((1, cache.length + spec.prompt), np.int64)
    logits, cache = prefill(engine, prompt, mask, cache, steering, position_offset=spec.offset)
    out = [logits[0]]
    for token in tokens[:-1]:
        mask = np.ones((1, mask.shape[1] + 1), np.int64)
        logits, cache = decode_one_token(engine, np.array([token]), mask, cache, steering, spec.offset)
        out.append(logits[0])
    return out


def test_one_rows_huge_bias_never_reaches_another_row(engine):
    huge = Spec(prompt=3, seed=20, context=12, steer=-30.0, max_new_tokens=8)
    others = [Spec(prompt=5, seed=21, max_new_tokens=8), Spec(prompt=4, seed=22, context=10, max_new_tokens=8)]
    batch = DecodeBatch(engine, 4)
    seen = [[], []]
    rows = []
    for i, spec in enumerate(others):
        rows.append(_row(engine, spec, [], []))
        batch.add(rows[-1])
    batch.add(_row(engine, huge, [], []))
    tokens = [[], []]
    for _ in range(8):
        for i, row in enumerate(rows):
            seen[i].append(row.logits.copy())
        batch.step()
        for i, row in enumerate(rows):
            tokens[i].append(row.generated)
    assert all(r.generated == 8 for r in rows)
    for i, (spec, row_logits) in enumerate(zip(others, seen)):
        solo_tokens = _solo(engine, spec)
        want = _solo_logits(engine, spec, solo_tokens)
        assert len(want) == len(row_logits) == 8
        for got, ref in zip(row_logits, want):
            np.testing.assert_allclose(got, ref, atol=ATOL)
    # and the huge bias does act on its own row
    alone = _solo_logits(engine, Spec(prompt=3, seed=20, context=12, max_new_tokens=8), _solo(engine, huge))
    steered = _solo_logits(engine, huge, _solo(engine, huge))
    assert np.abs(alone[0] - steered[0]).max() > 1e-2


def test_full_batch_and_bad_rows_are_refused(engine):
    batch = DecodeBatch(engine, 2)
    for seed in (1, 2):
        batch.add(_row(engine, Spec(prompt=3, seed=seed), [], []))
    with pytest.raises(ValueError, match="full"):
        batch.add(_row(engine, Spec(prompt=3, seed=3), [], []))
    with pytest.raises(ValueError, match="one-row cache"):
        BatchRow(np.zeros(8), engine.new_cache(2), emit=print)
    other = DecodeBatch(engine, 2)
    g = engine.geometry
    wrong = KVCache.empty(g.num_layers + 1, 1, g.num_kv_heads, g.head_dim)  # a cache of another model
    with pytest.raises(ValueError, match="does not fit engine"):
        other.add(BatchRow(np.zeros(8), wrong, emit=print))
    assert other.rows == []


def test_a_failing_step_fails_every_row_in_it(engine, monkeypatch):
    batch = DecodeBatch(engine, 4)
    failures = []
    for seed in (1, 2):
        row = _row(engine, Spec(prompt=3, seed=seed), [], [])
        row.fail = failures.append
        batch.add(row)
    monkeypatch.setattr(engine, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("session died")))
    assert batch.step() == 0
    assert [str(e) for e in failures] == ["session died", "session died"] and batch.rows == []


@pytest.mark.slow
def test_default_model_rows_in_one_batch_equal_their_solo_runs(default_engine):
    """SmolLM2-135M: four chat prompts of different lengths, one steered, two joining late."""
    engine = Engine.load(default_engine)
    tok = engine.tokenizer
    prompts = ["Write a short poem about the sea.", "What is the capital of France? Answer in one sentence.", "List three colours.",
               "Explain in two sentences why the sky is blue, for a child who asks."]
    ids = [np.array([chat_ids(tok, [{"role": "user", "content": p}])]) for p in prompts]
    g = engine.geometry
    steer = SteerBias(np.where(np.random.default_rng(0).random((g.num_layers, g.num_heads, ids[1].shape[1])) < 0.5, np.log(0.2), 0).astype(np.float32))
    steering = [None, steer, None, None]
    want = [[int(t[0]) for t in generate(engine, p, max_new_tokens=24, steering=s, stop_token_ids=set())] for p, s in zip(ids, steering)]
    batch, got = DecodeBatch(engine, 4), [[] for _ in prompts]
    for step in range(40):
        if step in (0, 3):
            for i in ((0, 1) if step == 0 else (2, 3)):
                logits, cache = prefill(engine, ids[i], np.ones(ids[i].shape, np.int64), engine.new_cache(1), steering[i])
                batch.add(BatchRow(logits[0], cache, emit=got[i].append, max_new_tokens=24, steering=steering[i]))
        batch.step()
    assert got == want
