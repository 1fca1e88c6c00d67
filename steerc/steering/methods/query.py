"""``query``: query-aware evidence steering on a reused context.

**Once per context** (stored): the plain KV, shared with ``none`` and every other method (its
own store entry, so it is held once), plus a small evidence index under its own key: the
context's units (sentences, or the documents of a multi-document input; see
:func:`~steerc.steering.evidence.context_units`) and the *calibration*, the attention a
content-free question pays to every context token ``[L, H, N]``, from one analysis-graph call
of that question over the cached context.

**Per query**: the question is run once over the cached context through the engine's *selector
graph* (the layers up to the last selector layer, emitting only their attention; engines
compiled before it use the analysis graph), which gives its rows' attention to every context
key. Minus the calibration, clipped at 0, summed over the *selector heads*, pooled to units:
their shares are the *evidence distribution*. The top ``evidence`` units are kept
(``min_share``: only units with at least that share, else the question is answered unsteered),
and ``hedge`` turns the distribution into each unit's fraction of ``log(alpha)``
(:func:`~steerc.steering.evidence.hedge`: ``off`` gives the kept units all the emphasis, the
other modes follow the selector's confidence). The *steered heads* get that bias on the context
keys (with ``target_share``, per head the alpha that lifts the evidence's attention share to
that target) while the question is prefilled and during decode; ``self_check`` prefills it
plain too and answers plain when the two disagree on the first answer token. The stored KV is
never changed.

``rank_by = lexical`` ranks units by word overlap with the question instead (the floor an
attention selector has to beat; it needs no selector call); ``fused`` combines both rankings.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from steerc.runtime.generate import positions_for, prefill
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.cache_fill import get_or_build
from steerc.steering.config import UNITS, SteerConfig
from steerc.steering.contexts import prepare_plain
from steerc.steering.evidence import (
    CALIBRATION_QUESTION,
    HEDGES,
    Units,
    adaptive_alphas,
    choose_units,
    context_units,
    fused_scores,
    hedge,
    hedged_bias,
    token_scores,
    token_strength,
    unit_scores,
)
from steerc.steering.keys import plain_key, store_key
from steerc.steering.methods.base import Evidence, EvidenceDistribution, QueryPlan, SteeringMethod
from steerc.steering.options import MethodOptions, option, parse_pairs
from steerc.steering.prepared import PreparedContext
from steerc.steering.profiles import selector_heads
from steerc.stores import StoredContext

__all__ = ["QueryEvidence", "QueryOptions", "question_attention", "lexical_scores", "backs_off"]

RANK_BY = ("attention", "lexical", "fused")

log = logging.getLogger(__name__)
_NO_SELECTOR_GRAPH: set[str] = set()  # engines whose missing selector graph was logged


@dataclass(frozen=True)
class QueryOptions(MethodOptions):
    """The ``evidence`` best units (``unit``: sentences, the documents/lines of a multi-document
    input, or ``auto``) by the question's calibrated attention summed over the ``selector`` heads
    (``[layer, head]`` pairs; empty = the engine's shipped profile, else the middle half of the
    layers), or by word overlap with ``rank_by = lexical``. ``min_share`` > 0 steers only when a
    unit holds at least that share of the score. ``target_share`` in (0, 1) replaces the fixed
    alpha by, per steered head, the one that lifts the evidence's attention share to it (``alpha``
    is then the strongest allowed)."""

    default_layers = "all"  # the dev sweep on SQuAD and NQ chose every layer (docs/RESULTS.md)

    evidence: int = option(1, "int", "how many units (sentences or documents) to steer towards", ge=1, per_query=True,
                           label="evidence (the number of units query steering keeps)")
    unit: str = option("auto", "choice", "what a unit is (auto: lines of a multi-document input, else sentences)", choices=UNITS, per_query=True)
    selector: tuple[tuple[int, int], ...] = option((), "pairs", "selector heads ([layer, head] pairs; empty: the engine's shipped profile, "
                                                               "else the middle half of the layers); on the command line LAYER:HEAD,..", per_query=True, cli_parse=parse_pairs)
    rank_by: str = option("fused", "choice", "rank units by the question's calibrated attention, or by word overlap", choices=RANK_BY, per_query=True)
    target_share: float = option(0.0, "number", "adaptive bias, per head lift the evidence's attention share to this (0 = fixed alpha)", ge=0, lt=1,
                                 must="0 (off: a fixed alpha) or a share in (0, 1)", per_query=True)
    min_share: float = option(0.0, "number", "steer only when the best unit holds at least this share of the score (0 = always)", ge=0, lt=1,
                              must="in [0, 1) (0 = always steer)", per_query=True)
    hedge: str = option("margin", "choice", "how the bias follows the evidence distribution: off (the chosen units get all of it), soft (every unit "
                                         "in proportion to its share), margin / entropy (the strength scales with the pick's confidence)",
                        choices=HEDGES, per_query=True)
    sharpness: float = option(1.0, "number", "hedge soft: unit u keeps (share_u / share_max) ** sharpness of the emphasis (higher: closer to off)",
                              gt=0, le=16, per_query=True)
    self_check: float = option(0.0, "number", "back off to the plain answer when the steered and plain question prefills disagree on the first "
                                              "answer token and the plain one is at least this sure (0 = off)", ge=0, lt=1,
                               must="in [0, 1) (0 = off)", per_query=True)

    def validate(self) -> None:
        if self.target_share and self.rank_by == "lexical":
            raise ValueError("target_share needs the question's attention: use it with rank_by 'attention' or 'fused'")
        if self.self_check and self.rank_by == "lexical":
            raise ValueError("self_check compares against the plain question prefill of the attention ranking: use it with rank_by 'attention' or 'fused'")

    def check(self, config, method: str) -> None:
        if config.steer_at != "decode":
            raise ValueError(f"method {method!r} picks its evidence per question, so the stored KV stays plain and the bias applies while the question "
                             f"is prefilled and decoded: steer_at must be 'decode', got {config.steer_at!r}")

_WORD = re.compile(r"\w+")
# Words that say nothing about which sentence answers a question.
_STOP = frozenset("a an the of in on at to for from by with and or is are was were be been what which who whom whose when where why how did does do "
                  "that this these those it its as".split())


def question_attention(engine, kv, query_ids: np.ndarray, position_offset: int = 0, selector: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """``[L, H, K]``: the mean attention of the rows of ``query_ids`` (prefilled after ``kv``,
    unsteered) to every key; ``K = kv.length + len(query_ids)``. ``position_offset``: positions
    a compacted ``kv`` dropped.

    ``selector``: the ``(layer, head)`` pairs the caller reads (None: every layer). When its layers
    are all among the selector graph's score layers (:meth:`~steerc.runtime.engine.Engine.select_scores`),
    that graph runs instead of the analysis graph (it stops after the last covered layer and
    outputs no logits or KV) with the same values; the other layers are NaN."""
    S = len(query_ids)
    mask = np.ones((1, kv.length + S), np.int64)  # [1, P+S]
    g = engine.geometry
    ids, positions = np.asarray(query_ids, np.int64)[None], positions_for(mask, S, position_offset)
    covered = engine.selector_score_layers
    if selector is not None and len(selector) and covered and {layer for layer, _ in selector} <= set(covered):
        out = np.full((g.num_layers, g.num_heads, mask.shape[1]), np.nan, np.float32)  # [L, H, P+S]
        out[list(covered)] = engine.select_scores(ids, positions, mask, kv)[0] / S  # [n, H, P+S]
        return out
    if selector is not None and not covered and engine.engine_id not in _NO_SELECTOR_GRAPH:
        _NO_SELECTOR_GRAPH.add(engine.engine_id)
        log.info("engine %s has no selector graph (compiled before steerc derived one); query selection runs the full analysis graph: "
                 "recompile it for a faster first token", engine.folder)
    bias = np.zeros((1, g.num_layers, g.num_heads, mask.shape[1]), np.float32)
    _, _, importance = engine.analyze(ids, positions, mask, kv, bias)  # [1, L, H, P+S]
    return importance[0] / S


def backs_off(plain: np.ndarray, steered: np.ndarray, sure: float) -> bool:
    """The self-check's rule on two first-answer-token logit vectors ``[V]``: the steered prefill
    picks another token than the plain one, and the plain one gives its token at least ``sure``."""
    z = np.asarray(plain, np.float64)
    p_plain = float(np.exp(z.max() - np.logaddexp.reduce(z)))
    return int(np.argmax(plain)) != int(np.argmax(steered)) and p_plain >= sure


def _words(text: str) -> Counter:
    return Counter(w for w in _WORD.findall(text.lower()) if w not in _STOP)


def lexical_scores(context: str, units: Units, question: str) -> np.ndarray:
    """``[U]``: how many of the question's content words each unit contains."""
    asked = set(_words(question))
    return np.array([len(asked & set(_words(context[s:e]))) for s, e in units.chars], np.float32)


def _preview(text: str, words: int = 8) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


class QueryEvidence(SteeringMethod):
    name = "query"
    summary = "query-aware evidence: the sentences or documents the question's calibrated attention points at, steered per query"
    eval_rank = 1
    selects_evidence = True
    options = QueryOptions

    def key_fields(self, config: SteerConfig) -> dict:
        # Only the units and the calibration are stored: selector, steered heads, alpha and N apply per query.
        return {"method": "query-index", "unit": config.options.unit, "calibration": CALIBRATION_QUESTION}

    def prepare(self, ctx, context: str, config: SteerConfig, progress=None) -> tuple[PreparedContext, str]:
        engine, store = ctx.engine, ctx.store
        g = engine.geometry
        config.steered_pairs(g.num_layers, g.num_heads)  # refuse heads beyond the engine before any work
        bad = [p for p in config.options.selector if p[0] >= g.num_layers or p[1] >= g.num_heads]
        if bad:
            raise ValueError(f"selector head {list(bad[0])} is outside the engine ({g.num_layers} layers x {g.num_heads} heads)")
        ids, offsets = ctx.context_tokens(context)
        head = np.asarray(ctx.layout.head_ids(config.prefixes[0]), np.int64)
        fields = self.key_fields(config)
        if ctx.document_spans:  # units are the documents, not the lines
            fields["documents"] = [list(map(int, span)) for span in ctx.document_spans]
        key = store_key(engine, [head], ids, fields)
        start = time.perf_counter()
        built: list = []  # (plain, its tier) when this request built the index

        def build() -> StoredContext:
            # Under the index's lock: the request that builds the index also prepares (or finds) the plain KV,
            # so concurrent requests for a new context wait once and then hit both entries (lock order: index, then plain).
            plain, plain_tier = prepare_plain(ctx, context, config, progress)
            built.append((plain, plain_tier))
            return self._index(ctx, context, offsets, config, plain)

        entry, tier = get_or_build(store, key, build)
        plain, plain_tier = built[0] if built else prepare_plain(ctx, context, config, progress)
        t = entry.tensors
        N = len(ids)
        meta = {"prepare_seconds": plain.meta.get("prepare_seconds", 0.0) + (time.perf_counter() - start if tier == "miss" else 0.0),
                "context_tokens": N, "head_tokens": len(head), "unit_kind": entry.meta["unit_kind"]}
        prepared = PreparedContext(key, config, head, ids, plain.kv, np.ones((g.num_layers, N), bool), np.zeros((0, g.num_layers, N), np.float32),
                                   np.zeros((g.num_layers, g.num_heads, len(head) + N), np.float32), meta,
                                   {"calibration": t["calibration"], "unit_chars": t["unit_chars"], "unit_tokens": t["unit_tokens"]}, kv_key=plain.kv_key)
        return prepared, "miss" if "miss" in (tier, plain_tier) else tier

    def _index(self, ctx, context: str, offsets, config: SteerConfig, plain: PreparedContext) -> StoredContext:
        """The evidence index: units and the content-free question's attention over the context."""
        Nh, N = len(plain.head_ids), len(plain.context_ids)
        units = context_units(context, offsets, config.options.unit, ctx.document_spans)
        calibration_ids = ctx.layout.query_ids(config.prefixes[0], CALIBRATION_QUESTION)
        calibration = question_attention(ctx.engine, plain.kv, calibration_ids)[..., Nh : Nh + N]  # [L, H, N]
        return StoredContext({"calibration": calibration.astype(np.float32), "unit_chars": units.chars, "unit_tokens": units.tokens},
                             {"kind": "evidence-index", "unit_kind": units.kind})

    def store_keys(self, ctx, prepared: PreparedContext, config: SteerConfig) -> list[str]:
        return [prepared.key, plain_key(ctx.engine, prepared.head_ids, prepared.context_ids)]

    def plan(self, ctx, prepared: PreparedContext, context: str, query: str, query_ids: np.ndarray, config: SteerConfig, progress=None) -> QueryPlan:
        start = time.perf_counter()
        engine, g, opts = ctx.engine, ctx.engine.geometry, config.options
        Nh, N = len(prepared.head_ids), len(prepared.context_ids)
        units = Units(prepared.meta.get("unit_kind", "sentence"), prepared.extras["unit_chars"], prepared.extras["unit_tokens"])
        unselected = np.ones((g.num_layers, N), bool)
        if len(units) < 2:  # nothing to choose between
            return QueryPlan(prepared.kv, None, unselected, seconds=time.perf_counter() - start)
        attention = None
        if opts.rank_by == "lexical":
            scores = lexical_scores(context, units, query)
        else:
            selector = opts.selector or selector_heads(engine)
            reads = None if opts.target_share else selector  # adaptive alphas read every steered layer
            attention = prepared.on_all_keys(question_attention(engine, prepared.kv, query_ids, prepared.position_offset, reads))  # [L, H, Nh + N + S]
            scores = unit_scores(token_scores(attention[..., Nh : Nh + N], prepared.extras["calibration"], selector), units)  # [U]
            if opts.rank_by == "fused":
                scores = fused_scores(scores, lexical_scores(context, units, query))
        chosen = choose_units(scores, opts.evidence, opts.min_share)
        hedged = hedge(scores, chosen, opts.hedge, opts.sharpness)
        evidence = tuple(Evidence(u, units.kind, int(units.chars[u, 0]), int(units.chars[u, 1]), float(hedged.shares[u]),
                                  _preview(context[units.chars[u, 0] : units.chars[u, 1]])) for u in chosen)
        keep = units.token_mask(chosen, N)  # [N]
        if opts.target_share and chosen:
            log_alpha = np.log(adaptive_alphas(attention, keep, Nh, opts.target_share, config.alpha))  # [L, H]
        else:
            log_alpha = np.full((g.num_layers, g.num_heads), np.log(config.alpha), np.float32)
        pairs = config.steered_pairs(g.num_layers, g.num_heads)
        strongest = min((float(log_alpha[p]) for p in pairs), default=0.0)
        distribution = EvidenceDistribution(units.kind, tuple(map(float, hedged.shares)), tuple(map(float, hedged.strength)),
                                            float(np.exp(strongest * hedged.confidence)), opts.hedge,
                                            spans=tuple((int(a), int(b)) for a, b in units.chars))
        if not chosen or hedged.confidence <= 0:  # not confident enough (min_share), or a flat distribution: answer unsteered
            return QueryPlan(prepared.kv, None, unselected, evidence, distribution=distribution, seconds=time.perf_counter() - start)
        strength = token_strength(units, hedged, N)  # [N] fraction of log(alpha) per context token
        bias = hedged_bias(strength, Nh, Nh + N, g.num_layers, g.num_heads, log_alpha, pairs)  # [L, H, Nh + N]
        steering = SteerBias(prepared.on_stored_keys(bias)) if bias.any() else None
        selected = np.broadcast_to(strength < 0.5 * hedged.confidence, (g.num_layers, N)).copy()  # [L, N] the emphasised tokens
        plan = QueryPlan(prepared.kv, steering, selected, evidence, distribution=distribution)
        if opts.self_check and steering is not None:
            plan = self._self_check(ctx, prepared, query_ids, plan, opts.self_check, unselected)
        plan.seconds = time.perf_counter() - start
        return plan

    @staticmethod
    def _self_check(ctx, prepared: PreparedContext, query_ids: np.ndarray, plan: QueryPlan, sure: float, unselected: np.ndarray) -> QueryPlan:
        """Prefill the question plain and steered; when they disagree on the first answer token and the
        plain prefill gives its token at least ``sure`` probability, answer plain. Either prefill is
        handed to the answer, so neither is repeated."""
        engine, kv = ctx.engine, prepared.kv
        ids = np.asarray(query_ids, np.int64)[None]  # [1, S]
        mask = np.ones((1, kv.length + ids.shape[1]), np.int64)  # [1, P+S]
        run = dict(chunk=ctx.prefill_chunk, position_offset=prepared.position_offset)
        plain_logits, plain_kv = prefill(engine, ids, mask, kv, None, **run)  # [1, V]
        steered_logits, steered_kv = prefill(engine, ids, mask, kv, plan.steering, **run)
        if backs_off(plain_logits[0], steered_logits[0], sure):
            backed_off = replace(plan.distribution, alpha_applied=1.0, backed_off=True)
            return QueryPlan(kv, None, unselected, plan.evidence, distribution=backed_off, prefilled=(plain_logits, plain_kv))
        plan.prefilled = (steered_logits, steered_kv)
        return plan
