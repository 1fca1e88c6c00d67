"""Assembly from cached documents on the tiny text engine: moving keys, R = 1 and R = 0, causality, faults."""

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.engine import ContextTooLongError
from steerc.runtime.generate import generate, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.rope_shift import rope_shift_for
from steerc.steering.documents import RECOMPUTE_RULES, assemble, document_kv, document_texts, head_kv, recompute_counts, recompute_ranges
from steerc.steering.keys import document_kv_key
from steerc.steering.layout import PromptLayout
from steerc.stores import MemoryStore

DOCS = ["Document (Title: Paris) Paris is the capital of France and its largest city.",
        "Document (Title: Nile) The Nile is a major river in northeastern Africa, flowing into the Mediterranean.",
        "Document (Title: Everest) Mount Everest is the highest mountain above sea level, on the border of Nepal and China."]


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


@pytest.fixture(scope="module")
def pieces(engine):
    layout = PromptLayout.for_tokenizer(engine.tokenizer)
    return layout.head_ids("Answer the question from the documents."), list(document_texts(layout, DOCS).ids)


def _full(engine, head, docs) -> KVCache:
    ids = np.concatenate([head, *docs])[None]
    return prefill(engine, ids, np.ones_like(ids), engine.new_cache(1))[1]


def _close(a: KVCache, b: KVCache, atol: float = 1e-4) -> None:
    assert a.length == b.length
    for x, y in zip(a.flat(), b.flat()):
        np.testing.assert_allclose(x, y, atol=atol)


def test_a_document_moved_to_an_offset_equals_computing_it_there(engine, pieces):
    head, docs = pieces
    ids = np.concatenate([head, docs[1]])[None]
    here = prefill(engine, ids, np.ones_like(ids), engine.new_cache(1))[1]
    there = prefill(engine, ids, np.ones_like(ids), engine.new_cache(1), position_offset=41)[1]  # every position 41 later
    _close(rope_shift_for(engine).shift(here, 41), there)
    assert np.abs(here.keys[0] - there.keys[0]).max() > 1e-2  # the positions matter (the test can fail)


def _rank_last_first(kv, Nh, spans):  # a ranking that prefers later documents (the question rule's scores)
    return np.arange(len(spans), dtype=np.float64)


@pytest.mark.parametrize("rule", RECOMPUTE_RULES)
def test_recompute_one_equals_a_full_prefill(engine, pieces, rule):
    head, docs = pieces
    assembled = assemble(engine, head, docs, MemoryStore(), 1.0, rule=rule, rank=_rank_last_first)
    full = _full(engine, head, docs)
    _close(assembled.kv, full)
    assert assembled.report.recomputed_tokens == len(docs[1]) + len(docs[2])  # the first document is exact as cached
    assert assembled.report.reused_tokens == len(docs[0])
    query = np.array([[13, 42, 7, 99]], np.int64)
    greedy = [list(generate(engine, query, cache=kv, max_new_tokens=6, stop_token_ids=set())) for kv in (assembled.kv, full)]
    assert [t.tolist() for t in greedy[0]] == [t.tolist() for t in greedy[1]]


@pytest.mark.parametrize("rule", RECOMPUTE_RULES)
def test_recompute_zero_is_plain_concatenation(engine, pieces, rule):
    head, docs = pieces
    store = MemoryStore()
    assembled = assemble(engine, head, docs, store, 0.0, rule=rule)  # the question rule ranks nothing: no rank needed
    shift, Nh = rope_shift_for(engine), len(head)
    parts, at = [head_kv(engine, head, store)[0]], Nh
    for d in docs:
        parts.append(shift.shift(document_kv(engine, head, d, store)[0], at - Nh))
        at += len(d)
    _close(assembled.kv, KVCache.concat(parts), atol=0)
    assert assembled.report.recomputed_tokens == 0 and assembled.report.reused_tokens == sum(map(len, docs))
    assert np.abs(assembled.kv.keys[-1] - _full(engine, head, docs).keys[-1]).max() > 1e-3  # not a full prefill: layer 1 misses cross-document attention


@pytest.mark.parametrize("rule", RECOMPUTE_RULES)
def test_a_recomputed_token_never_sees_a_later_document(engine, pieces, rule):
    head, docs = pieces
    end = len(head) + len(docs[0]) + len(docs[1])  # every position of documents 1 and 2
    third = [docs[2], docs[2][::-1]]
    store = MemoryStore()
    a, b = (assemble(engine, head, [docs[0], docs[1], d], store, 0.5, rule=rule, rank=lambda kv, Nh, spans: np.array([0.0, 2.0, 1.0]))
            for d in third)
    assert a.report.recomputed_tokens > 0 and a.report.recomputed_tokens == b.report.recomputed_tokens
    _close(a.kv.slice(0, end), b.kv.slice(0, end), atol=0)
    assert not np.array_equal(a.kv.slice(end).values[0], b.kv.slice(end).values[0])
    if rule == "question":  # the ranking put document 2 first: it is recomputed whole, over the exact document 1
        doc2 = slice(len(head) + len(docs[0]), end)
        _close(a.kv.slice(doc2.start, doc2.stop), _full(engine, head, docs[:2]).slice(doc2.start, doc2.stop))


def test_the_question_rule_needs_a_ranking_unless_nothing_or_everything_is_recomputed(engine, pieces):
    head, docs = pieces
    with pytest.raises(ValueError, match="question recompute rule needs"):
        assemble(engine, head, docs, MemoryStore(), 0.3, rule="question")
    with pytest.raises(ValueError, match="unknown recompute rule"):
        assemble(engine, head, docs, MemoryStore(), 0.3, rule="deviation")
    calls = []
    done = assemble(engine, head, docs, MemoryStore(), 0.3, rule="question", rank=lambda kv, Nh, spans: calls.append((kv.length, Nh, spans)) or [0, 1, 2])
    N = sum(map(len, docs))
    assert calls == [(len(head) + N, len(head), [(0, len(docs[0])), (len(docs[0]), len(docs[0]) + len(docs[1])), (len(docs[0]) + len(docs[1]), N)])]
    assert done.report.recomputed_tokens == sum(recompute_counts(list(map(len, docs)), 0.3)) and done.report.rule == "question"


def test_a_missing_document_is_computed_and_stored_again(engine, pieces):
    head, docs = pieces
    store = MemoryStore()
    first = assemble(engine, head, docs, store, 0.25)
    assert first.report.computed_documents == 3 and first.report.tiers == ["miss"] * 3
    store.delete(document_kv_key(engine.engine_id, head, docs[1]))
    again = assemble(engine, head, docs, store, 0.25)
    assert again.report.computed_documents == 1 and again.report.tiers == ["memory", "miss", "memory"]
    _close(again.kv, first.kv, atol=0)
    reordered = assemble(engine, head, [docs[2], docs[0]], store, 0.25)  # another mix: nothing new to compute
    assert reordered.report.computed_documents == 0 and reordered.report.context_tokens == len(docs[2]) + len(docs[0])


def test_refusals(engine, pieces):
    head, docs = pieces
    with pytest.raises(ValueError, match="no documents"):
        assemble(engine, head, [], MemoryStore(), 0.1)
    with pytest.raises(ValueError, match="document 2 is empty"):
        assemble(engine, head, [docs[0], np.zeros(0, np.int64)], MemoryStore(), 0.1)
    with pytest.raises(ContextTooLongError, match="at most 384"):
        assemble(engine, head, [docs[0], np.tile(docs[1], 20)], MemoryStore(), 0.1)
    with pytest.raises(ValueError, match="recompute must be in"):
        recompute_counts([3], 1.5)


def test_recompute_ranges_spend_one_budget():
    lengths = [10, 10, 7, 20]  # budget at 0.25: 3 + 2 + 5 = 10 tokens, none of the first document's
    assert recompute_ranges(lengths, 0.25, "first") == [(0, 0), (0, 3), (0, 2), (0, 5)]
    assert recompute_ranges(lengths, 0.25, "last") == [(0, 0), (7, 10), (5, 7), (15, 20)]
    assert recompute_ranges(lengths, 0.25, "suffix") == [(0, 0), (0, 0), (0, 0), (10, 20)]
    assert recompute_ranges(lengths, 0.5, "suffix") == [(0, 0), (0, 0), (0, 0), (1, 20)]  # 5 + 4 + 10 = 19
    assert recompute_ranges(lengths, 0.75, "suffix") == [(0, 0), (8, 10), (0, 7), (0, 20)]  # 8 + 6 + 15 = 29: across documents
    scores = np.array([9.0, 1.0, 5.0, 3.0])  # the first document never counts: 2, then 3, then 1
    assert recompute_ranges(lengths, 0.25, "question", scores) == [(0, 0), (0, 0), (0, 7), (0, 3)]
    assert recompute_ranges(lengths, 0.5, "question", scores) == [(0, 0), (0, 0), (0, 7), (0, 12)]
    assert recompute_ranges([10, 5, 5], 0.5, "question", np.array([0.0, 1.0, 1.0])) == [(0, 0), (0, 5), (0, 1)]  # ties: the earlier first
    for rule in ("first", "last", "suffix", "question"):
        assert recompute_ranges(lengths, 0.0, rule) == [(0, 0)] * 4
        assert recompute_ranges(lengths, 1.0, rule) == [(0, 0), (0, 10), (0, 7), (0, 20)]
    with pytest.raises(ValueError, match="one score per document"):
        recompute_ranges(lengths, 0.25, "question")
    with pytest.raises(ValueError, match="unknown recompute rule"):
        recompute_ranges(lengths, 0.25, "middle")


def test_recompute_counts():
    assert recompute_counts([10, 10, 7], 0.15) == [0, 2, 2]
    assert recompute_counts([10, 10], 0.0) == [0, 0]
    assert recompute_counts([10, 9], 1.0) == [0, 9]


def test_report_time_saved_against_a_measured_prefill_rate():
    from steerc.steering.documents import AssemblyReport

    report = AssemblyReport(documents=2, context_tokens=300, seconds=0.5)
    assert report.saved_s(100.0) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="prefill_tokens_per_s must be > 0"):
        report.saved_s(0)
    assert report.to_dict()["assembly_s"] == 0.5
