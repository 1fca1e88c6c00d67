"""Assembly from cached documents on the tiny text engine: moving keys, R = 1 and R = 0, causality, faults."""

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.engine import ContextTooLongError
from steerc.runtime.generate import generate, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.rope_shift import rope_shift_for
from steerc.steering.documents import assemble, document_kv, document_texts, head_kv, recompute_counts
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


def test_recompute_one_equals_a_full_prefill(engine, pieces):
    head, docs = pieces
    assembled = assemble(engine, head, docs, MemoryStore(), 1.0)
    full = _full(engine, head, docs)
    _close(assembled.kv, full)
    assert assembled.report.recomputed_tokens == len(docs[1]) + len(docs[2])  # the first document is exact as cached
    assert assembled.report.reused_tokens == len(docs[0])
    query = np.array([[13, 42, 7, 99]], np.int64)
    greedy = [list(generate(engine, query, cache=kv, max_new_tokens=6, stop_token_ids=set())) for kv in (assembled.kv, full)]
    assert [t.tolist() for t in greedy[0]] == [t.tolist() for t in greedy[1]]


def test_recompute_zero_is_plain_concatenation(engine, pieces):
    head, docs = pieces
    store = MemoryStore()
    assembled = assemble(engine, head, docs, store, 0.0)
    shift, Nh = rope_shift_for(engine), len(head)
    parts, at = [head_kv(engine, head, store)[0]], Nh
    for d in docs:
        parts.append(shift.shift(document_kv(engine, head, d, store)[0], at - Nh))
        at += len(d)
    _close(assembled.kv, KVCache.concat(parts), atol=0)
    assert assembled.report.recomputed_tokens == 0 and assembled.report.reused_tokens == sum(map(len, docs))
    assert np.abs(assembled.kv.keys[-1] - _full(engine, head, docs).keys[-1]).max() > 1e-3  # not a full prefill: layer 1 misses cross-document attention


def test_a_recomputed_token_never_sees_a_later_document(engine, pieces):
    head, docs = pieces
    end = len(head) + len(docs[0]) + len(docs[1])  # the recomputed tokens of document 2 lie before this
    a = assemble(engine, head, docs, MemoryStore(), 0.5)
    b = assemble(engine, head, [docs[0], docs[1], docs[2][::-1]], MemoryStore(), 0.5)
    _close(a.kv.slice(0, end), b.kv.slice(0, end), atol=0)
    assert not np.array_equal(a.kv.slice(end).values[0], b.kv.slice(end).values[0])


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
