"""LLMSteer selection: importance prefills, per-layer top-k, intersection, and the bias.

Shapes: ``L`` layers, ``H`` query heads, ``N`` context tokens, ``K`` cached keys (head tokens
then context tokens).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, positions_for
from steerc.runtime.kv_cache import KVCache

__all__ = ["importance_prefill", "top_k_count", "top_k_mask", "select_tokens", "steering_bias"]

log = logging.getLogger(__name__)


def importance_prefill(
    engine: Engine,
    ids: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    window: int = 0,
    chunk: int = DEFAULT_PREFILL_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, KVCache]:
    """Prefill ``ids [S]`` (batch 1) and return ``(importance [L, H, S], cache)``: the attention
    each position receives, summed over every later query row (or, with ``window`` > 0, over
    the last ``window`` rows only: earlier chunks then run on the plain graph). ``bias [L, H, S]``
    steers the prefill. Chunks of at most ``chunk`` tokens bound memory; their sums add up."""
    ids = np.asarray(ids, np.int64)
    (S,) = ids.shape
    g = engine.geometry
    engine.check_length(S, f"a context prefill of {S} tokens")
    bias = np.zeros((g.num_layers, g.num_heads, S), np.float32) if bias is None else np.asarray(bias, np.float32)
    observe_from = max(0, S - window) if window else 0
    importance = np.zeros((g.num_layers, g.num_heads, S), np.float64)  # [L, H, S]
    cache = engine.new_cache(1)
    # Chunk boundaries: the observation window starts a chunk of its own.
    bounds = sorted({*range(0, S, chunk), observe_from, S})
    for start, end in zip(bounds, bounds[1:]):
        mask = np.ones((1, end), np.int64)  # [1, P+S]
        args = (ids[None, start:end], positions_for(mask, end - start), mask, cache, bias[None, :, :, :end])
        if start >= observe_from:
            _, cache, chunk_importance = engine.analyze(*args)  # [1, L, H, end]
            importance[..., :end] += chunk_importance[0]
        else:
            _, cache = engine.forward(*args)
        if progress:
            progress(end, S)
    return importance.astype(np.float32), cache


def top_k_count(k: float, n: int) -> int:
    """``k`` as a ratio (< 1) or a count (>= 1) of ``n`` tokens; at least 1, at most ``n``."""
    count = math.ceil(k * n) if k < 1 else int(k)
    return max(1, min(n, count))


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """``scores [L, N]`` -> bool ``[L, N]``: each row's ``k`` highest (ties: earlier token first)."""
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def select_tokens(importance_a: np.ndarray, importance_b: np.ndarray, k: float) -> np.ndarray:
    """LLMSteer: per layer, the top-k context tokens of each pass (heads summed), intersected.
    ``importance_* [L, N]`` -> bool ``[L, N]``."""
    if importance_a.shape != importance_b.shape:
        raise ValueError(f"the two passes cover different contexts: {importance_a.shape} vs {importance_b.shape}")
    count = top_k_count(k, importance_a.shape[-1])
    return top_k_mask(importance_a, count) & top_k_mask(importance_b, count)


def steering_bias(selected: np.ndarray, offset: int, total: int, num_heads: int, alpha: float, pairs: list[tuple[int, int]]) -> np.ndarray:
    """``[L, H, total]`` bias: ``log(alpha)`` on the context keys (positions ``offset ..
    offset + N``) that are not ``selected [L, N]``, on the steered (layer, head) ``pairs``; 0 on
    every other key (the instruction head before the context, anything after it)."""
    L, N = selected.shape
    if offset + N > total:
        raise ValueError(f"the context ends at key {offset + N}, beyond the {total} keys covered")
    bias = np.zeros((L, num_heads, total), np.float32)
    down = np.where(selected, 0.0, math.log(alpha)).astype(np.float32)  # [L, N]
    for layer, head in pairs:
        bias[layer, head, offset : offset + N] = down[layer]
    return bias
