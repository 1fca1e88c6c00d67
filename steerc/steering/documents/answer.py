"""Answering over documents: a context assembled from cached documents, steered like any other.

:func:`answer_documents` tokenizes the documents (:mod:`~steerc.steering.documents.text`),
assembles their KV from the store (:mod:`~steerc.steering.documents.assembly`), and answers with
the steerer's method over that KV: the method's hooks see an ordinary context whose plain KV is
the assembled one (held, for this request only, in a scratch store in front of nothing, so no
approximate KV is ever filed under an exact context's key) and whose units are the documents
(``query`` picks a document). ``recompute=None`` answers over a full prefill of the same tokens
instead, the reference an assembled answer is paired against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from steerc.runtime.generate import SamplingParams
from steerc.steering.answer import SteeredAnswer, Steerer
from steerc.steering.documents.assembly import AssemblyReport, Ranking, assemble
from steerc.steering.documents.options import DEFAULT_RULE
from steerc.steering.documents.text import DocumentTexts, document_texts
from steerc.steering.evidence import CALIBRATION_QUESTION, Units, fused_scores, token_scores, unit_scores
from steerc.steering.keys import kv_key
from steerc.steering.method_context import Progress
from steerc.steering.methods.query import lexical_scores, question_attention
from steerc.steering.profiles import selector_heads
from steerc.steering.stored_kv import kv_entry
from steerc.stores import MemoryStore

__all__ = ["DocumentAnswer", "answer_documents", "question_ranking", "stream_documents"]


@dataclass
class DocumentAnswer:
    answer: SteeredAnswer  # its ttft_s and prepare_s include the assembly; cache "documents" (assembled) or "miss" (full prefill)
    texts: DocumentTexts
    report: AssemblyReport | None  # None: a full prefill


def _scratch() -> MemoryStore:
    store = MemoryStore(1 << 40)  # this request's entries only; dropped with it
    store.kv_scheme = "engine"
    return store


def question_ranking(steerer: Steerer, texts: DocumentTexts, query: str) -> Ranking:
    """The ``question`` recompute rule's ranking: ``query``'s document scores (its default
    selector heads' attention of the question, minus a content-free question's, pooled per
    document, fused with word overlap) over an assembled KV: two short selector passes."""
    engine, layout, prefix = steerer.engine, steerer.layout, steerer.config.prefixes[0]
    query_ids = layout.query_ids(prefix, query)
    calibration_ids = layout.query_ids(prefix, CALIBRATION_QUESTION)
    units = Units("document", np.asarray(texts.spans, np.int64).reshape(-1, 2), np.zeros((len(texts.ids), 2), np.int64))
    lexical = lexical_scores(texts.context, units, query)  # [k]

    def rank(kv, Nh: int, spans: list[tuple[int, int]]) -> np.ndarray:
        selector = selector_heads(engine)
        N = spans[-1][1]
        asked = question_attention(engine, kv, query_ids, selector=selector)[..., Nh : Nh + N]  # [L, H, N]
        calibration = question_attention(engine, kv, calibration_ids, selector=selector)[..., Nh : Nh + N]
        tokens = Units("document", units.chars, np.asarray(spans, np.int64))
        return fused_scores(unit_scores(token_scores(asked, calibration, selector), tokens), lexical)  # [k]

    return rank


def stream_documents(steerer: Steerer, documents: list[str], query: str, *, recompute: float | None, max_new_tokens: int = 64,
                     sampling: SamplingParams = SamplingParams(), progress: Progress | None = None, stop: tuple[str, ...] = (),
                     result: list | None = None, rule: str = DEFAULT_RULE) -> Iterator[str]:
    """Yield the answer's text over ``documents`` assembled from ``steerer.store`` with ``recompute``
    of the tokens ``rule`` picks (None: a full prefill of the same tokens); ``result`` (a list)
    receives the :class:`DocumentAnswer`."""
    start = time.perf_counter()
    if not query.strip():
        raise ValueError("the query is empty")
    texts = document_texts(steerer.layout, documents)
    config, engine = steerer.config, steerer.engine
    scratch, report = _scratch(), None
    if recompute is not None:
        head = steerer.layout.head_ids(config.prefixes[0])
        rank = question_ranking(steerer, texts, query) if rule == "question" else None
        assembled = assemble(engine, head, list(texts.ids), steerer.store, recompute, rule=rule, rank=rank, chunk=steerer.prefill_chunk)
        scratch.put(kv_key(engine.engine_id, assembled.head_ids, assembled.context_ids), kv_entry(assembled.kv))
        report = assembled.report
    child = Steerer(engine, config, scratch, chat=steerer.layout.chat, prefill_chunk=steerer.prefill_chunk, generate_fn=steerer.generate_fn)
    child.context_tokens = texts.tokens
    child.document_spans = texts.spans
    before = time.perf_counter() - start
    yield from child.stream(texts.context, query, max_new_tokens=max_new_tokens, sampling=sampling, progress=progress, stop=stop)
    answer = replace(child.last, ttft_s=child.last.ttft_s + before, prepare_s=child.last.prepare_s + before,
                     cache="documents" if report is not None else child.last.cache)
    steerer.last, steerer.last_context, steerer.last_plan = answer, child.last_context, child.last_plan
    if result is not None:
        result.append(DocumentAnswer(answer, texts, report))


def answer_documents(steerer: Steerer, documents: list[str], query: str, *, recompute: float | None, **kwargs) -> DocumentAnswer:
    """:func:`stream_documents` to the end: the answer, the documents' texts and the assembly report."""
    result: list[DocumentAnswer] = []
    for _ in stream_documents(steerer, documents, query, recompute=recompute, result=result, **kwargs):
        pass
    return result[0]
