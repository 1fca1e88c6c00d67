"""``qllm``: query-aware block retrieval over a reused context (QuickLLaMA / Q-LLM, arXiv 2406.07528).

**Once per context** (stored): the plain KV (the entry ``none`` and ``query`` share) and a small
block index under its own key: the blocks' token ranges and each block's representative key
per layer (the mean key of the 4 tokens that received the most attention while the context was
prepared, from one analysis-graph prefill; see :mod:`steerc.steering.blocks`).

**Per query**: the question runs once through the analysis graph over the cached context, which
gives every layer's query vectors; blocks are scored by the dot product of their
representative keys with the mean question query, on the *selector heads* (the retrieval heads
of the engine's shipped profile, as for ``query``, or ``selector``; Q-LLM itself uses every head,
which on SmolLM2's NQ dev questions picked the wrong documents), and the best ``blocks`` are kept, with the
first ``initial`` and last ``local`` context tokens, the instruction head and the query. The
other blocks are dropped:

* ``block_mask = hard`` (Q-LLM's form): the KV is cut down to the kept keys (positions are
  preserved: keys are cached after rotary and the query continues at its original positions),
  so the question's prefill and every decode step attend to fewer keys;
* ``soft``: every steered head gets ``log(alpha)`` on the dropped keys (the full KV stays).

``retrieve_for = question`` (the default, Q-LLM's form) prefills the question again over the
kept keys, so the question and the answer attend to the retrieved blocks; ``answer`` keeps the
scoring call's KV for the question (read once, over everything) and restricts only its last
token and the answer, which saves the second question prefill but lost on NQ (docs/RESULTS.md). The stored
KV is never changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from steerc.runtime.generate import positions_for
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.blocks import REPRESENTATIVES, block_bounds, block_scores, kept_tokens, representative_keys
from steerc.steering.cache_fill import get_or_build
from steerc.steering.compaction import check_positions_preserved
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import plain_context, prepare_plain
from steerc.steering.keys import plain_key, store_key
from steerc.steering.methods.base import Evidence, QueryPlan, SteeringMethod
from steerc.steering.options import MethodOptions, option, parse_pairs
from steerc.steering.prepared import PreparedContext, save_prepared
from steerc.steering.profiles import selector_heads
from steerc.steering.selection import importance_prefill
from steerc.stores import StoredContext

__all__ = ["QLLM", "QLLMOptions", "score_call"]


@dataclass(frozen=True)
class QLLMOptions(MethodOptions):
    """Blocks of ``block_size`` tokens; the ``blocks`` best (by the ``selector`` heads, as for
    ``query``) are kept with the first ``initial`` and last ``local`` context tokens; the others
    are dropped (``block_mask`` hard) or down-weighted by alpha (soft); ``retrieve_for``: whether the
    question is read again over the kept blocks or only the answer attends to them."""

    default_layers = "all"  # Q-LLM retrieves on every layer

    blocks: int = option(4, "int", "context blocks retrieved per question", ge=1, per_query=True)
    block_size: int = option(64, "int", "tokens per block", ge=4, per_query=True)
    initial: int = option(16, "int", "first context tokens always attended", ge=0, per_query=True)
    local: int = option(64, "int", "last context tokens always attended", ge=0, per_query=True)
    block_mask: str = option("hard", "choice", "drop the other blocks (hard) or down-weight them by alpha (soft)", choices=("hard", "soft"), per_query=True)
    retrieve_for: str = option("question", "choice", "the question and answer attend to the retrieved blocks, or only the answer (the question is read once)",
                               choices=("question", "answer"), per_query=True)
    selector: tuple[tuple[int, int], ...] = option((), "pairs", "selector heads ([layer, head] pairs; empty: the engine's shipped profile, "
                                                               "else the middle half of the layers); on the command line LAYER:HEAD,..", per_query=True, cli_parse=parse_pairs)

    def check(self, config, method: str) -> None:
        if config.steer_at != "decode":
            raise ValueError(f"method {method!r} picks its evidence per question, so the stored KV stays plain and the bias applies while the question "
                             f"is prefilled and decoded: steer_at must be 'decode', got {config.steer_at!r}")


def score_call(engine, kv, query_ids: np.ndarray, position_offset: int = 0):
    """The question over ``kv`` on the analysis graph: ``(mean query [L, H, D], KV extended by the
    question, last row's logits [V])``."""
    S = len(query_ids)
    mask = np.ones((1, kv.length + S), np.int64)  # [1, P+S]
    g = engine.geometry
    bias = np.zeros((1, g.num_layers, g.num_heads, mask.shape[1]), np.float32)
    logits, cache, _, queries = engine.analyze(np.asarray(query_ids, np.int64)[None], positions_for(mask, S, position_offset), mask, kv, bias, queries=True)
    return queries[0] / S, cache, logits[0, -1]


def _block_evidence(block: int, bounds: np.ndarray, offsets, context: str, score: float) -> Evidence:
    """A retrieved block as evidence: its character range in the context and first words."""
    start, end = int(offsets[bounds[block, 0]][0]), int(offsets[bounds[block, 1] - 1][1])
    words = context[start:end].split()
    return Evidence(block, "block", start, end, score, " ".join(words[:8]) + (" …" if len(words) > 8 else ""))


class QLLM(SteeringMethod):
    name = "qllm"
    summary = "Q-LLM block retrieval: the blocks of the context whose representative keys match the question's queries, the rest dropped per query"
    eval_rank = 1
    selects_evidence = True
    options = QLLMOptions

    def key_fields(self, config: SteerConfig) -> dict:
        # The index depends on the block size only; which blocks are kept is decided per query.
        return {"method": "qllm-index", "block_size": config.options.block_size, "representatives": REPRESENTATIVES}

    def prepare(self, ctx, context: str, config: SteerConfig, progress=None) -> tuple[PreparedContext, str]:
        engine, store = ctx.engine, ctx.store
        g = engine.geometry
        if not engine.has_queries:
            engine.analyze(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64), engine.new_cache(1),
                           np.zeros((1, g.num_layers, g.num_heads, 1), np.float32), queries=True)  # raises the recompile message
        pairs = config.options.selector or selector_heads(engine)
        bad = [p for p in pairs if p[0] >= g.num_layers or p[1] >= g.num_heads]
        if bad:
            raise ValueError(f"selector head {list(bad[0])} is outside the engine ({g.num_layers} layers x {g.num_heads} heads)")
        ids, _ = ctx.context_tokens(context)
        head = ctx.layout.head_ids(config.prefixes[0])
        key = store_key(engine, [head], ids, self.key_fields(config))
        start = time.perf_counter()
        built: list[PreparedContext] = []  # the plain context, when the index was built now (one analysis prefill gives both)

        def build() -> StoredContext:
            entry, plain = self._index(ctx, head, ids, config, progress)
            built.append(plain)
            return entry

        entry, tier = get_or_build(store, key, build)
        plain, plain_tier = (built[0], "miss") if built else (None, "miss")
        if plain is None:
            plain, plain_tier = prepare_plain(ctx, context, config, progress)
        t, N = entry.tensors, len(ids)
        meta = {"prepare_seconds": plain.meta.get("prepare_seconds", 0.0) + (time.perf_counter() - start if tier == "miss" else 0.0),
                "context_tokens": N, "head_tokens": len(head)}
        prepared = PreparedContext(key, config, head, ids, plain.kv, np.ones((g.num_layers, N), bool), np.zeros((0, g.num_layers, N), np.float32),
                                   np.zeros((g.num_layers, g.num_heads, len(head) + N), np.float32), meta,
                                   {"block_bounds": t["block_bounds"], "block_keys": t["block_keys"]}, plain.positions, plain.kv_key)
        return prepared, "miss" if "miss" in (tier, plain_tier) else tier

    def _index(self, ctx, head: np.ndarray, ids: np.ndarray, config: SteerConfig, progress) -> tuple[StoredContext, PreparedContext]:
        """One analysis prefill of ``head + context``: the block index, and the plain KV (stored as the plain entry)."""
        engine, store = ctx.engine, ctx.store
        start = time.perf_counter()
        report = (lambda done, total: progress("block index", done, total)) if progress else None
        importance, kv = importance_prefill(engine, np.concatenate([head, ids]), chunk=ctx.prefill_chunk, progress=report)  # [L, H, Nh + N]
        plain = plain_context(engine, head, ids, kv, time.perf_counter() - start)
        with store.lock(plain.key):
            if plain.key not in store:
                save_prepared(store, plain)  # the KV once, unless another entry stored it already
        bounds = block_bounds(len(ids), config.options.block_size)
        keys, tokens = representative_keys(kv, importance[..., len(head) :], len(head), bounds)
        return StoredContext({"block_bounds": bounds, "block_keys": keys, "representatives": tokens}, {"kind": "block-index", "block_size": config.options.block_size}), plain

    def store_keys(self, ctx, prepared: PreparedContext, config: SteerConfig) -> list[str]:
        return [prepared.key, plain_key(ctx.engine, prepared.head_ids, prepared.context_ids)]

    def plan(self, ctx, prepared: PreparedContext, context: str, query: str, query_ids: np.ndarray, config: SteerConfig, progress=None) -> QueryPlan:
        start = time.perf_counter()
        engine, g = ctx.engine, ctx.engine.geometry
        Nh, N = len(prepared.head_ids), len(prepared.context_ids)
        bounds, keys = prepared.extras["block_bounds"], prepared.extras["block_keys"]
        answer_only = config.options.retrieve_for == "answer" and len(query_ids) > 1
        scored = query_ids[:-1] if answer_only else query_ids
        queries, extended, _ = score_call(engine, prepared.kv, scored, prepared.position_offset)  # [L, H, D]
        pairs = [p for p in (config.options.selector or selector_heads(engine)) if prepared.kv.keys[p[0]] is not None]  # shared-attention layers hold no keys
        pairs = pairs or [(layer, head) for layer in range(g.num_layers) if prepared.kv.keys[layer] is not None for head in range(g.num_heads)]
        scores = block_scores(queries, keys, pairs)  # [NB]
        keep, chosen = kept_tokens(scores, bounds, N, config.options.blocks, config.options.initial, config.options.local)  # [N]
        offsets = ctx.context_tokens(context)[1]
        evidence = tuple(_block_evidence(int(b), bounds, offsets, context, float(scores[b])) for b in chosen)
        selected = np.broadcast_to(keep, (g.num_layers, N)).copy()
        if keep.all():  # every block fits: nothing to drop
            return QueryPlan(prepared.kv, None, selected, evidence, seconds=time.perf_counter() - start)
        stored = prepared.on_stored_keys(np.concatenate([np.ones(Nh, bool), keep]))  # [K] kept among the stored keys
        if config.options.block_mask == "hard":
            check_positions_preserved(engine, "qllm with --block-mask hard")
            rows = np.flatnonzero(stored)
            if answer_only:  # the question's own keys (all but its last token) follow the context in the scoring call's KV
                rows = np.concatenate([rows, np.arange(prepared.kv.length, extended.length)])
                kv = extended.take(rows)
                return QueryPlan(kv, None, selected, evidence, seconds=time.perf_counter() - start, query_ids=query_ids[-1:],
                                 position_offset=prepared.full_length + len(scored) - kv.length)
            kv = prepared.kv.take(rows)
            return QueryPlan(kv, None, selected, evidence, seconds=time.perf_counter() - start, position_offset=prepared.full_length - kv.length)
        bias = np.zeros((g.num_layers, g.num_heads, len(stored)), np.float32)  # [L, H, K]
        for layer, head in config.steered_pairs(g.num_layers, g.num_heads):
            bias[layer, head, ~stored] = np.log(config.alpha)
        if answer_only:
            bias = np.concatenate([bias, np.zeros((g.num_layers, g.num_heads, len(scored)), np.float32)], -1)
            return QueryPlan(extended, SteerBias(bias), selected, evidence, seconds=time.perf_counter() - start, query_ids=query_ids[-1:],
                             position_offset=prepared.position_offset)
        return QueryPlan(prepared.kv, SteerBias(bias), selected, evidence, seconds=time.perf_counter() - start, position_offset=prepared.position_offset)
