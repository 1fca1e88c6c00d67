"""Compacted stored contexts (``keep``): store only the KV of the context tokens that matter.

The transferable idea of Self-Selected Attention Span (arXiv 2404.09336) without fine-tuning:
steerc already knows which context tokens matter once it has prepared a context, so a stored
context can drop the others for good. The entry then holds the instruction head, the first
``keep_sinks`` context tokens (attention sinks), the last ``keep_recent`` and the most
important of the rest, ``keep`` in all (a ratio of the context or a count). Importance is
LLMSteer's dual-prefix importance (two analysis prefills; see
:meth:`~steerc.steering.contexts.BuildJob.dual_importance`), as *mean* attention received: each
token's summed attention divided by the rows that could attend to it, so early tokens are not
favoured for being early.

**Positions are preserved**: the cache holds keys after the rotary embedding, so a kept key
still encodes its original position, and the question continues at the original position ids
(``position_offset``). The same engine runs it, no recompile. This holds for every
architecture whose positions enter only through the keys and queries (rotary: Llama, Qwen2,
Mistral, Qwen2, Phi-3); models with learned absolute position embeddings (GPT-2) add them to
the hidden state per token from the position ids, so it holds there too. It does not hold for
a sliding window shorter than the engine's length (Gemma-2/3, Mistral with a window): the
window is measured in cache slots, which a cut-down cache packs closer than the positions, so
:func:`check_positions_preserved` refuses those engines.

It combines with every method: the method prepares the full context first (in a scratch store,
so nothing of the full context is kept), then the entry is cut down and stored under its own
key, which records the keep setting. The method's per-query work (biases over every context
position, attention read over the stored keys) maps through
:meth:`~steerc.steering.prepared.PreparedContext.on_stored_keys` / ``on_all_keys``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from steerc.steering.cache_fill import get_or_build_prepared
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import BuildJob
from steerc.steering.keys import store_key
from steerc.steering.method_context import MethodContext, Progress
from steerc.steering.prepared import PreparedContext
from steerc.stores import MemoryStore

if TYPE_CHECKING:
    from steerc.steering.methods.base import SteeringMethod

__all__ = ["check_positions_preserved", "kept_count", "kept_context_tokens", "kept_unit_tokens", "prepare_compacted", "compaction_key_fields"]

log = logging.getLogger(__name__)


def check_positions_preserved(engine, what: str) -> None:
    """Raise ``ValueError`` when dropping keys from the cache would change what the engine computes
    (a sliding attention window shorter than the engine's length, measured in cache slots)."""
    import json

    path = engine.folder / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    text = config.get("text_config") or config
    window = text.get("sliding_window")
    sliding = text.get("use_sliding_window", True) and "sliding_attention" in (text.get("layer_types") or ["sliding_attention"])
    if window and sliding and window < engine.max_seq_len:
        raise ValueError(f"{what} needs a KV cache with keys dropped, but this engine's model ({text.get('model_type', '?')}) uses a sliding attention "
                         f"window of {window} tokens, counted in cache slots: dropping keys would move the window. Use it without dropping keys "
                         "(qllm: --block-mask soft; compaction: --keep 1)")


def kept_count(keep: float, num_tokens: int) -> int:
    """Context tokens ``keep`` asks for: a ratio in (0, 1] of ``num_tokens`` or a count."""
    if keep <= 0 or (keep > 1 and keep != int(keep)):
        raise ValueError(f"keep must be a ratio in (0, 1] or a whole token count, got {keep!r}")
    if keep > 1:
        if keep > num_tokens:
            raise ValueError(f"keep {int(keep)} tokens is more than the context's {num_tokens} tokens; give a smaller count or a ratio in (0, 1]")
        return int(keep)
    return max(1, int(round(keep * num_tokens)))


def kept_context_tokens(importance: np.ndarray, keep: float, sinks: int = 4, recent: int = 0) -> np.ndarray:
    """Sorted context indices to keep. ``importance [passes, L, N]`` (or ``[L, N]``) is attention
    received summed over the later rows; sinks and recent tokens count towards ``keep`` (if they
    alone exceed it, they are all kept)."""
    imp = importance if importance.ndim == 3 else importance[None]
    N = imp.shape[-1]
    count = kept_count(keep, N)
    score = _token_scores(imp)  # [N] mean attention received
    fixed = np.zeros(N, bool)
    fixed[: min(sinks, N)] = True
    if recent:
        fixed[max(0, N - recent) :] = True
    rest = max(0, count - int(fixed.sum()))
    order = [t for t in np.argsort(-score, kind="stable") if not fixed[t]][:rest]
    fixed[order] = True
    return np.flatnonzero(fixed)


def kept_unit_tokens(importance: np.ndarray, units, keep: float, sinks: int = 4, recent: int = 0) -> np.ndarray:
    """Like :func:`kept_context_tokens`, but whole units (sentences, or the documents of a
    multi-document input) are kept or dropped: units by their mean per-token score, best first,
    until ``keep`` is reached (the last one may overshoot it). Tokens between units stay."""
    imp = importance if importance.ndim == 3 else importance[None]
    N = imp.shape[-1]
    count = kept_count(keep, N)
    score = _token_scores(imp)
    fixed = np.ones(N, bool)
    for start, end in units.tokens:
        fixed[start:end] = False  # unit tokens compete; whatever lies outside every unit is kept
    fixed[: min(sinks, N)] = True
    if recent:
        fixed[max(0, N - recent) :] = True
    means = np.array([score[s:e].mean() if e > s else -np.inf for s, e in units.tokens])
    for u in np.argsort(-means, kind="stable"):
        if fixed.sum() >= count:
            break
        fixed[units.tokens[u, 0] : units.tokens[u, 1]] = True
    return np.flatnonzero(fixed)


def _token_scores(imp: np.ndarray) -> np.ndarray:
    """``[N]`` mean attention each token received per observing row, averaged over passes and layers."""
    N = imp.shape[-1]
    observers = np.arange(N, 0, -1, dtype=np.float64)  # token t is seen by the N - t rows from t on
    per_layer = imp.astype(np.float64) / np.maximum(imp.sum(-1, keepdims=True), 1e-30)  # each layer's share
    return (per_layer / observers).mean((0, 1))


def compaction_key_fields(method: "SteeringMethod", config: SteerConfig) -> dict:
    return {"compacted": method.key_fields(config), "keep": config.keep, "keep_sinks": config.keep_sinks, "keep_recent": config.keep_recent,
            "keep_unit": config.keep_unit, "importance": "dual-prefix", "window": config.window}


def prepare_compacted(ctx: MethodContext, method: "SteeringMethod", context: str, config: SteerConfig,
                      progress: Progress | None = None) -> tuple[PreparedContext, str]:
    """The compacted prepared context, from the store or built now (and stored); its tier."""
    engine = ctx.engine
    ids, _ = ctx.context_tokens(context)
    kept_count(config.keep, len(ids))  # refuse a bad keep before any work
    check_positions_preserved(engine, f"--keep {config.keep}")
    heads = [np.asarray(ctx.layout.head_ids(p), np.int64) for p in config.prefixes]
    key = store_key(engine, heads[:1], ids, compaction_key_fields(method, config))

    def build() -> PreparedContext:
        start = time.perf_counter()
        scratch = MemoryStore(1 << 62)  # the full context's entries live only while it is cut down
        job = BuildJob(engine, heads, ids, config, key, None, None, scratch, ctx.prefill_chunk, progress)
        importance = job.dual_importance(config.window)  # [2, L, N]; stores the plain KV in the scratch store
        full, _ = method.prepare(ctx.with_store(scratch), context, config, progress)
        if config.keep_unit == "token":
            kept = kept_context_tokens(importance, config.keep, config.keep_sinks, config.keep_recent)
        else:
            from steerc.steering.evidence import context_units

            kept = kept_unit_tokens(importance, context_units(context, ctx.context_tokens(context)[1], config.keep_unit), config.keep,
                                    config.keep_sinks, config.keep_recent)
        positions = np.concatenate([np.arange(len(full.head_ids)), len(full.head_ids) + kept])
        prepared = full.compacted(positions)
        prepared.key, prepared.config = key, config  # the entry records the keep setting it was made with
        prepared.meta = {**prepared.meta, "prepare_seconds": time.perf_counter() - start, "kept_keys": int(len(positions)),
                         "full_keys": int(full.full_length)}
        log.info("context %s… compacted to %d of %d keys (keep %s) in %.2f s", key[:12], len(positions), full.full_length, config.keep,
                 prepared.meta["prepare_seconds"])
        return prepared  # stored with the kept keys' KV, under its own content address

    return get_or_build_prepared(ctx.store, key, build)
