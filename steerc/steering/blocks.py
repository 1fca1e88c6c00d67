"""Q-LLM block retrieval over a cached context: blocks, their representative keys, their scores.

Shapes: ``L`` layers, ``H`` query heads, ``Hkv`` KV heads (query head ``h`` reads KV head
``h // (H / Hkv)``), ``D`` head size, ``N`` context tokens, ``NB`` blocks, ``R`` representatives.

* **Blocks** are consecutive runs of ``block_size`` context tokens (the last may be shorter).
* **Representatives** (Q-LLM's ``context_manager.py``): per layer, the ``R = 4`` tokens of each
  block that received the most attention while the context was prepared (heads summed); their
  keys (stored after rotary, as the cache holds them) are averaged per KV head.
* **Score** of a block for a question: per layer, the dot product of the block's representative
  key with the question's mean query vector, summed over the layer's scoring heads (Q-LLM
  concatenates heads, which is the same sum). Layers score on different scales, so each layer's
  scores are standardised over the blocks and the layers averaged: one ranking, one set of kept
  blocks for every layer, so the KV can be cut down physically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steerc.runtime.kv_cache import KVCache

__all__ = ["REPRESENTATIVES", "block_bounds", "representative_keys", "layer_scores", "block_scores", "kept_tokens"]

REPRESENTATIVES = 4  # tokens per block that stand for it (Q-LLM's default)


def block_bounds(num_tokens: int, block_size: int) -> np.ndarray:
    """``[NB, 2]`` token ranges ``[start, end)`` of ``num_tokens`` context tokens."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    starts = np.arange(0, num_tokens, block_size, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + block_size, num_tokens)], 1) if num_tokens else np.zeros((0, 2), np.int64)


def representative_keys(kv: KVCache, importance: np.ndarray, offset: int, bounds: np.ndarray, reps: int = REPRESENTATIVES) -> tuple[np.ndarray, np.ndarray]:
    """``(keys [L, Hkv, NB, D] float32, tokens [L, NB, R] int64)``.

    ``importance [L, N]`` (or ``[L, H, N]``, heads are summed) is the attention each context
    token received; context token ``t`` is cache position ``offset + t``. ``tokens`` holds each
    block's representatives (context indices, ``-1`` where a block has fewer than ``R``)."""
    imp = importance.sum(1) if importance.ndim == 3 else importance  # [L, N]
    L, NB = imp.shape[0], len(bounds)
    tokens = np.full((L, NB, reps), -1, np.int64)
    for b, (start, end) in enumerate(bounds):
        order = np.argsort(-imp[:, start:end], axis=1, kind="stable")[:, :reps]  # [L, <=R], most attended first
        tokens[:, b, : order.shape[1]] = start + order
    keys = np.zeros((L, kv.values[0].shape[1], NB, kv.values[0].shape[3]), np.float32)
    for layer in range(L):
        if kv.keys[layer] is None:
            continue
        cached = kv.keys[layer][0].astype(np.float32)  # [Hkv, Nh + N, D]
        for b in range(NB):
            picked = tokens[layer, b][tokens[layer, b] >= 0]
            keys[layer, :, b] = cached[:, offset + picked].mean(1)
    return keys, tokens


def layer_scores(queries: np.ndarray, keys: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[L, NB]``: per layer, ``sum_h queries[l, h] . keys[l, kv(h), b]`` over the layer's heads in
    ``pairs`` (``queries [L, H, D]``, the question's mean query); NaN for layers without one."""
    L, H, _ = queries.shape
    group = H // keys.shape[1]
    out = np.full((L, keys.shape[2]), np.nan, np.float64)
    for layer, head in pairs:
        dots = keys[layer, head // group] @ queries[layer, head].astype(np.float64)  # [NB]
        out[layer] = dots if np.isnan(out[layer]).all() else out[layer] + dots
    return out


def block_scores(queries: np.ndarray, keys: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[NB]``: :func:`layer_scores` standardised over the blocks per layer, averaged over layers."""
    if not pairs:
        raise ValueError("no scoring heads")
    per_layer = layer_scores(queries, keys, pairs)
    per_layer = per_layer[~np.isnan(per_layer).all(1)]  # [L', NB]
    spread = per_layer.std(1, keepdims=True)
    z = (per_layer - per_layer.mean(1, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    return z.mean(0).astype(np.float32)


def kept_tokens(scores: np.ndarray, bounds: np.ndarray, num_tokens: int, count: int, initial: int, local: int) -> tuple[np.ndarray, list[int]]:
    """``(keep [N] bool, chosen blocks)``: the first ``initial`` and last ``local`` context tokens
    and the ``count`` best-scoring blocks among those not already wholly kept (ties: the earlier
    block), best first."""
    keep = np.zeros(num_tokens, bool)
    keep[: min(initial, num_tokens)] = True
    if local:
        keep[max(0, num_tokens - local) :] = True
    candidates = [b for b, (s, e) in enumerate(bounds) if not keep[s:e].all()]
    order = sorted(candidates, key=lambda b: (-float(scores[b]), b))[:count]
    for b in order:
        keep[bounds[b, 0] : bounds[b, 1]] = True
    return keep, order
