"""Answering over documents with a steering method (tiny text engine)."""

import pytest

from steerc.runtime import Engine
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.documents import answer_documents, document_texts
from steerc.stores import MemoryStore

DOCS = ["Document (Title: Paris) Paris is the capital of France.", "Document (Title: Nile) The Nile is a river in Africa.",
        "Document (Title: Everest) Everest is the highest mountain.\nIt lies in the Himalayas."]


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def test_recompute_one_answers_as_the_full_prefill_and_query_picks_documents(engine):
    store = MemoryStore()
    for method in ("none", "query"):
        steerer = Steerer(engine, SteerConfig(method=method), store)
        full = answer_documents(steerer, DOCS, "Which river is in Africa?", recompute=None, max_new_tokens=8)
        same = answer_documents(steerer, DOCS, "Which river is in Africa?", recompute=1.0, max_new_tokens=8)
        assert same.answer.token_ids == full.answer.token_ids
        assert full.report is None and same.report.documents == 3 and same.answer.cache == "documents"
        if method == "query":
            shares = same.answer.distribution
            assert shares.kind == "document" and len(shares.shares) == 3  # one unit per document, though the third has two lines
    kinds = [entry.meta.get("kind") for entry, _ in list(store._entries.values())]
    assert kinds.count("document") == 3  # one KV per distinct document, shared by both methods and every request


def test_the_question_rule_ranks_the_documents_by_the_question(engine):
    store = MemoryStore()
    for method in ("none", "query"):
        steerer = Steerer(engine, SteerConfig(method=method), store)
        full = answer_documents(steerer, DOCS, "Which river is in Africa?", recompute=None, max_new_tokens=8)
        exact = answer_documents(steerer, DOCS, "Which river is in Africa?", recompute=1.0, rule="question", max_new_tokens=8)
        assert exact.answer.token_ids == full.answer.token_ids and exact.report.rank_s == 0  # nothing to rank at R = 1
        part = answer_documents(steerer, DOCS, "Which river is in Africa?", recompute=0.4, rule="question", max_new_tokens=8)
        assert part.report.rule == "question" and part.report.rank_s > 0 and part.report.recomputed_documents >= 1
        assert part.report.recomputed_tokens == sum(-(-len(ids) * 4 // 10) for ids in part.texts.ids[1:])  # the first rule's budget


def test_document_texts_and_refusals(engine):
    steerer = Steerer(engine, SteerConfig(method="none"), MemoryStore())
    texts = document_texts(steerer.layout, ["a\r\n", "b  "])
    assert texts.context == "a\nb\n" and texts.spans == ((0, 1), (2, 3))
    with pytest.raises(ValueError, match="no documents"):
        answer_documents(steerer, [], "Why?", recompute=0.1)
    with pytest.raises(ValueError, match="document 2 is empty"):
        answer_documents(steerer, ["text", " \n"], "Why?", recompute=0.1)
    with pytest.raises(ValueError, match="another context"):
        texts.tokens("other")
