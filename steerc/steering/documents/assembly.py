"""Assembling a context from cached documents, with selective recompute.

A context of documents ``[d1 … dk]`` behind the instruction head is the head's KV followed by each
document's cached KV (:mod:`steerc.steering.documents.cached`: computed alone, right after the
head), its keys moved to where the document lands (:mod:`steerc.runtime.rope_shift`). Cached
alone, a document never attended to the documents before it; ``recompute`` (R) restores part of
that: a budget of ``ceil(R * n)`` tokens per document (the first document's excluded, summed) is
prefilled again, as ordinary prefill chunks over the assembled cache of the head and everything
before them, and their new KV replaces the cached one. ``recompute_rule`` says which tokens
(:func:`recompute_ranges`; every rule spends the same budget):

* ``first``: the first ``ceil(R * n)`` tokens of each document (EPIC, arXiv 2410.15332);
* ``last``: the last ``ceil(R * n)`` tokens of each document;
* ``suffix``: the context's last tokens, one contiguous chunk up to the end;
* ``question``: whole documents, those the question ranks highest: the question (and query's
  content-free calibration question) is run once over the plain concatenation (R = 0) through
  the selector heads, as ``query`` scores its units (:func:`~steerc.steering.documents.answer.question_ranking`);
  that pass counts in the assembly's time.

Documents are processed in order, so a recomputed token attends only to earlier positions
(causality holds by construction: the engine's bias is per key, not per query row).

* The first document sits where it was computed (right after the head, behind nothing else): its
  cached KV is the full prefill's, so it is never recomputed.
* ``R = 1`` recomputes every later document in full, under every rule: the same computation as a
  full prefill in chunks cut at the documents (equal to float rounding; identical greedy outputs).
* ``R = 0`` is plain concatenation (llama.cpp's ``--cache-reuse``).
* Why ``first`` is the default (docs/RESULTS.md, "Documents as reusable units"; NQ 10 documents,
  dev split, 60 questions, paired against the full prefill, subspan EM): at R = 0.15 ``first``
  loses 5.0 points, ``last`` and ``suffix`` 6.7, ``question`` 10.0, as much as plain
  concatenation (R = 0). Giving the evidence document its cross-document attention back does
  not restore the answers; re-prefilling every document's first tokens (which, cached, saw only
  the head) does best, though still not as well as the full prefill. The contiguous rules (``suffix``, ``question``) are cheaper per token
  (one prefill chunk instead of one per document: a first token 5.0x sooner than the full
  prefill's at R = 0.15, against 3.3x for ``first``), but spending that time on more recompute
  does not help: at R = 0.3 (about 3x) ``suffix`` loses 8.3 points and ``question`` 15.0.
  CacheBlend's most-deviating tokens (layer-1 key deviation, scattered) were tried in eager
  PyTorch (``tools/exp_cacheblend.py``; they need a per-query-row mask the engine lacks): on dev
  R = 0.3 matched the full prefill, once on test they scored as ``first`` (-12 / -9 points at
  R = 0.15 / 0.3, against -13 / -9), so they were not built into the engine.

A missing or evicted document is computed (alone, behind the head) and stored on the way.
Refused with a clear error: an empty list, an empty document, a context longer than the engine,
an engine whose keys cannot be moved (:class:`~steerc.runtime.rope_shift.RopeShiftError`: no
RoPE, dynamic scaling, a sliding window shorter than the context), an unknown rule, the
``question`` rule without a ranking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.rope_shift import rope_shift_for
from steerc.steering.documents.cached import document_kv, head_kv
from steerc.steering.documents.options import DEFAULT_RULE, RECOMPUTE_RULES
from steerc.stores import ContextStore

__all__ = ["AssemblyReport", "AssembledContext", "Ranking", "assemble", "recompute_budget", "recompute_counts", "recompute_ranges"]


@dataclass
class AssemblyReport:
    """What an assembly reused, recomputed and computed, and how long it took."""

    documents: int
    context_tokens: int
    reused_tokens: int = 0  # cached KV placed as it was (keys moved)
    recomputed_tokens: int = 0  # re-prefilled over the assembled cache
    computed_documents: int = 0  # missing from the store: computed alone now (and stored)
    computed_tokens: int = 0
    recompute_s: float = 0.0
    recomputed_documents: int = 0  # documents with any token re-prefilled
    rank_s: float = 0.0  # the question rule's ranking pass over the plain concatenation
    rule: str = ""  # the recompute rule
    seconds: float = 0.0  # the whole assembly
    tiers: list[str] = field(default_factory=list)  # per document: where its KV came from ("memory", "disk", …, "miss")

    def saved_s(self, prefill_tokens_per_s: float) -> float:
        """Seconds saved against a full prefill of the context at ``prefill_tokens_per_s`` (a rate the
        caller measured on full prefills: one recompute chunk per document costs more per token
        than a long prefill, so this assembly's own rate would overstate it)."""
        if prefill_tokens_per_s <= 0:
            raise ValueError(f"prefill_tokens_per_s must be > 0, got {prefill_tokens_per_s!r}")
        return self.context_tokens / prefill_tokens_per_s - self.seconds

    def to_dict(self) -> dict:
        out = {"documents": self.documents, "context_tokens": self.context_tokens, "reused_tokens": self.reused_tokens,
               "recomputed_tokens": self.recomputed_tokens, "computed_documents": self.computed_documents, "computed_tokens": self.computed_tokens,
               "recompute_s": round(self.recompute_s, 4), "recompute_rule": self.rule,
               "recomputed_documents": self.recomputed_documents, "rank_s": round(self.rank_s, 4), "assembly_s": round(self.seconds, 4), "tiers": list(self.tiers)}
        return out


@dataclass
class AssembledContext:
    head_ids: np.ndarray  # [Nh] int64
    context_ids: np.ndarray  # [N] int64: the documents' tokens, in order
    spans: list[tuple[int, int]]  # each document's token range in context_ids
    kv: KVCache  # batch 1, Nh + N positions
    report: AssemblyReport


def recompute_counts(lengths: list[int], recompute: float) -> list[int]:
    """How many leading tokens of each document the ``first`` rule re-prefills: ``ceil(recompute * n)``, none of the first document's."""
    if not 0 <= recompute <= 1:
        raise ValueError(f"recompute must be in [0, 1], got {recompute!r}")
    return [0 if i == 0 else min(n, math.ceil(recompute * n - 1e-9)) for i, n in enumerate(lengths)]


def recompute_budget(lengths: list[int], recompute: float) -> int:
    """The tokens a rule may re-prefill: ``ceil(recompute * n)`` of every document but the first, summed."""
    return sum(recompute_counts(lengths, recompute))


def recompute_ranges(lengths: list[int], recompute: float, rule: str, scores: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Per document, the token range ``[a, b)`` re-prefilled (``(0, 0)``: none); never any of the first document's.

    * ``first``: the first ``ceil(recompute * n)`` tokens of each document;
    * ``last``: the last ``ceil(recompute * n)`` tokens of each document;
    * ``suffix``: the last :func:`recompute_budget` tokens of the context (contiguous, up to the end);
    * ``question``: whole documents, the highest ``scores`` first (``[k]``, one per document; ties:
      the earlier one), until the budget is spent (the last one partly: its first tokens).

    Every rule spends the same budget (the ``first`` rule's), ``recompute = 1`` re-prefills every
    document but the first and ``recompute = 0`` none."""
    if rule not in RECOMPUTE_RULES:
        raise ValueError(f"unknown recompute rule {rule!r}: choose from {', '.join(RECOMPUTE_RULES)}")
    counts = recompute_counts(lengths, recompute)
    if rule == "first":
        return [(0, r) for r in counts]
    if rule == "last":
        return [(n - r, n) if r else (0, 0) for n, r in zip(lengths, counts)]
    budget = sum(counts)
    out = [(0, 0)] * len(lengths)
    if rule == "suffix":
        for i in range(len(lengths) - 1, 0, -1):
            take = min(budget, lengths[i])
            if take:
                out[i] = (lengths[i] - take, lengths[i])
            budget -= take
        return out
    if budget == 0:
        return out
    if budget == sum(lengths[1:]):  # everything after the first document: no ranking needed
        return [(0, 0)] + [(0, n) for n in lengths[1:]]
    if scores is None or len(scores) != len(lengths):
        raise ValueError(f"the question rule needs one score per document ({len(lengths)}), got {None if scores is None else len(scores)}")
    order = [int(i) for i in np.argsort(-np.asarray(scores, np.float64), kind="stable") if i != 0]
    for i in order:
        if budget <= 0:
            break
        take = min(budget, lengths[i])
        out[i] = (0, take)
        budget -= take
    return out


Ranking = Callable[[KVCache, int, list[tuple[int, int]]], np.ndarray]  # (assembled KV, head length, document token spans) -> [k] scores


def assemble(engine: Engine, head_ids: np.ndarray, documents: list[np.ndarray], store: ContextStore, recompute: float, *,
             rule: str = DEFAULT_RULE, rank: Ranking | None = None, chunk: int = DEFAULT_PREFILL_CHUNK) -> AssembledContext:
    """The context of ``documents`` (token ids each) behind ``head_ids``, assembled from their
    cached KVs in ``store`` (computed and stored when missing), with the tokens ``rule`` picks
    (:func:`recompute_ranges`) re-prefilled. The ``question`` rule calls ``rank`` on the plain
    concatenation (R = 0) for every document's score; that time counts in the assembly's."""
    start = time.perf_counter()
    head_ids = np.asarray(head_ids, np.int64)
    documents = [np.asarray(d, np.int64) for d in documents]
    if not documents:
        raise ValueError("no documents to assemble: give at least one")
    empty = [i for i, d in enumerate(documents) if not len(d)]
    if empty:
        raise ValueError(f"document {empty[0] + 1} is empty (no tokens)")
    if rule not in RECOMPUTE_RULES:
        raise ValueError(f"unknown recompute rule {rule!r}: choose from {', '.join(RECOMPUTE_RULES)}")
    lengths = [len(d) for d in documents]
    Nh, N = len(head_ids), sum(lengths)
    engine.check_length(Nh + N + 1, f"the {len(documents)} documents ({N} tokens behind a {Nh}-token instruction, plus one to generate)")
    shift = rope_shift_for(engine)
    shift.check_window(Nh + N, f"the {len(documents)} documents ({Nh + N} positions with the instruction)")
    recompute_counts(lengths, recompute)  # checks recompute
    report = AssemblyReport(len(documents), N, rule=rule)
    head, _ = head_kv(engine, head_ids, store, chunk)
    placed: list[KVCache] = []  # each document's cached KV, its keys moved to where it lands
    spans, at = [], 0
    for ids in documents:
        cached, tier = document_kv(engine, head_ids, ids, store, head=head, chunk=chunk)
        report.tiers.append(tier)
        if tier == "miss":
            report.computed_documents += 1
            report.computed_tokens += len(ids)
        placed.append(shift.shift(cached, at) if at else cached)
        spans.append((at, at + len(ids)))
        at += len(ids)
    scores = None
    if rule == "question" and 0 < recompute_budget(lengths, recompute) < N - lengths[0]:
        if rank is None:
            raise ValueError("the question recompute rule needs the question (a ranking of the documents)")
        t0 = time.perf_counter()
        scores = np.asarray(rank(KVCache.concat([head, *placed]), Nh, spans), np.float64)  # [k]
        report.rank_s = time.perf_counter() - t0
    ranges = recompute_ranges(lengths, recompute, rule, scores)
    pieces: list[KVCache] = [head]
    for i, (ids, (a, b)) in enumerate(zip(documents, ranges)):
        if a == b:
            pieces.append(placed[i])
            report.reused_tokens += len(ids)
            continue
        if a:
            pieces.append(placed[i].slice(0, a))
        cache = KVCache.concat(pieces) if len(pieces) > 1 else pieces[0]
        t0 = time.perf_counter()
        before = Nh + spans[i][0] + a
        _, cache = prefill(engine, ids[None, a:b], np.ones((1, before + b - a), np.int64), cache, chunk=chunk)
        report.recompute_s += time.perf_counter() - t0
        report.recomputed_tokens += b - a
        report.recomputed_documents += 1
        pieces = [cache]
        if b < len(ids):
            pieces.append(placed[i].slice(b))
        report.reused_tokens += len(ids) - (b - a)
    kv = KVCache.concat(pieces) if len(pieces) > 1 else pieces[0]
    report.seconds = time.perf_counter() - start
    return AssembledContext(head_ids, np.concatenate(documents), spans, kv, report)
