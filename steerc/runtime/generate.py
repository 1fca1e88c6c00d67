"""Token-level generation in the gpt-fast shape: ``prefill``, ``decode_one_token``, ``generate``.

Shapes: ``B`` rows, ``P`` cached positions, ``S`` new positions, ``V`` vocabulary. Batches
are left-padded: ``attention_mask [B, P+S]`` is 0 on padding, and positions count only real
tokens. The steering input is always fed (zeros when ``steering`` is None).

On an in-place engine (``--kv in-place``) :func:`generate` moves the cache into
:class:`~steerc.runtime.kv_buffers.KVBuffers` once and every step writes into them; the
caller's :class:`KVCache` is never modified. :func:`prefill` and :func:`decode_one_token`
take either kind and return the kind they were given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.kv_buffers import KVBuffers
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steer_bias import SteerBias

# Prompts are prefilled in calls of at most this many tokens: exact (each chunk attends to the
# cache so far) and it bounds prefill memory, which one call would spend on [B, S, V] logits and
# [B, H, S, P+S] masks (a 4 x 2048-token prefill in one call was OOM-killed at 24 GiB).
DEFAULT_PREFILL_CHUNK = 512

__all__ = ["DEFAULT_PREFILL_CHUNK", "SamplingParams", "prefill", "prefill_prompt", "decode_one_token", "generate", "sample", "positions_for"]


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy; otherwise softmax sampling restricted by top-k and top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """``logits [B, V]`` -> tokens ``[B]``: greedy, or temperature + top-k + top-p sampling."""
    if params.temperature == 0:
        return logits.argmax(-1)
    scores = logits.astype(np.float64) / params.temperature  # [B, V]
    if params.top_k:
        kth = np.sort(scores, axis=-1)[:, -min(params.top_k, scores.shape[-1])][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if params.top_p < 1:
        order = np.argsort(-probs, axis=-1)  # most likely first
        sorted_probs = np.take_along_axis(probs, order, -1)
        keep_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < params.top_p  # smallest prefix reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], np.int64)


def positions_for(attention_mask: np.ndarray, new: int, offset: int = 0) -> np.ndarray:
    """Position ids of the last ``new`` positions: real tokens before each one, plus ``offset``
    (the positions a compacted cache dropped: its keys keep their original positions)."""
    return (np.clip(attention_mask.cumsum(-1) - 1, 0, None)[:, -new:] + offset).astype(np.int64)


def _bias(engine: Engine, steering: SteerBias | None, batch: int, total: int) -> np.ndarray:
    g = engine.geometry
    if steering is None:
        return np.zeros((batch, g.num_layers, g.num_heads, total), np.float32)
    return steering.for_keys(batch, total)


def prefill(
    engine: Engine,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    cache: KVCache | KVBuffers,
    steering: SteerBias | None = None,
    chunk: int = 0,
    progress: Callable[[int, int], None] | None = None,
    position_offset: int = 0,
) -> tuple[np.ndarray, KVCache | KVBuffers]:
    """Run ``input_ids [B, S]`` after ``cache`` (``attention_mask [B, P+S]``); return the last
    position's logits ``[B, V]`` and the extended cache. ``chunk > 0`` splits long inputs into
    calls of at most ``chunk`` tokens (exact: each chunk attends to the cache so far).
    ``position_offset``: positions the cache does not hold (a compacted cache of ``P`` kept keys
    out of ``P + offset``); new tokens continue at their original positions."""
    B, S = input_ids.shape
    engine.check_length(cache.length + S + position_offset, f"a prompt of {S} tokens after {cache.length + position_offset} cached")
    step = chunk if chunk > 0 else S
    # An in-place engine given a KVCache prefills each chunk through the concat contract (buffers of
    # exactly past + chunk): buffers of the whole prompt's capacity would save a copy of the past per
    # chunk but make every chunk attend over the whole capacity, masked (1.52x the concat engine's time to
    # first token of 2016 tokens in chunks of 256, against 1.09x this way; docs/BENCHMARKS.md, "KV update in place").
    logits = None
    for start in range(0, S, step):
        end = min(S, start + step)
        mask = attention_mask[:, : cache.length + end - start]
        total = mask.shape[1]
        out, cache = engine.forward(input_ids[:, start:end], positions_for(mask, end - start, position_offset), mask, cache,
                                    _bias(engine, steering, B, total))
        logits = out[:, -1]  # [B, V]
        if progress:
            progress(end, S)
    return logits, cache


def decode_one_token(engine: Engine, tokens: np.ndarray, attention_mask: np.ndarray, cache: KVCache | KVBuffers, steering: SteerBias | None = None,
                     position_offset: int = 0) -> tuple[np.ndarray, KVCache | KVBuffers]:
    """``tokens [B]`` after ``cache`` (``attention_mask [B, P+1]``) -> ``(logits [B, V], cache)``."""
    B = tokens.shape[0]
    total = attention_mask.shape[1]
    logits, cache = engine.forward(tokens[:, None].astype(np.int64), positions_for(attention_mask, 1, position_offset), attention_mask, cache,
                                   _bias(engine, steering, B, total))
    return logits[:, -1], cache


def prefill_prompt(engine: Engine, input_ids: np.ndarray, attention_mask: np.ndarray | None, cache: KVCache | None, steering: SteerBias | None, *,
                   prefill_chunk: int = DEFAULT_PREFILL_CHUNK, progress: Callable[[int, int], None] | None = None, position_offset: int = 0,
                   prefilled: tuple[np.ndarray, KVCache] | None = None, buffers: bool = False) -> tuple[np.ndarray, KVCache | KVBuffers, np.ndarray]:
    """What :func:`generate` does before its first token (the server's decode batch too):
    ``(logits [B, V], the cache after the prompt, attention_mask [B, P+S])``. ``input_ids [B, S]``
    go after ``cache`` (default empty), or ``prefilled`` holds their prefill already. ``buffers``:
    on an in-place engine, the cache becomes :class:`KVBuffers` (the prompt and the decode steps
    then write into them)."""
    B, S = input_ids.shape
    cache = cache if cache is not None else engine.new_cache(B)
    new_mask = np.ones((B, S), np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
    mask = np.concatenate([np.ones((B, cache.length), np.int64), new_mask], axis=1)  # [B, P+S]
    if prefilled is not None:
        logits, cache = prefilled
        if cache.length != mask.shape[1]:
            raise ValueError(f"the prefilled cache holds {cache.length} positions, not the {mask.shape[1]} of the cache plus the input")
    if steering is not None:
        steering.check(engine.geometry.num_layers, engine.geometry.num_heads, B)
    if prefilled is None:  # a KVCache prefills chunk by chunk at exactly its length (see prefill), buffers over their capacity
        logits, cache = prefill(engine, input_ids, mask, cache, steering, chunk=prefill_chunk, progress=progress, position_offset=position_offset)
    if buffers and isinstance(cache, KVCache) and getattr(engine, "kv_in_place", False):
        cache = engine.buffers_for(cache, mask.shape[1])  # decode steps then write into the buffers (growing by chunks)
    return logits, cache, mask


def generate(
    engine: Engine,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    max_new_tokens: int = 128,
    sampling: SamplingParams = SamplingParams(),
    steering: SteerBias | None = None,
    stop_token_ids: set[int] | None = None,
    cache: KVCache | None = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    position_offset: int = 0,
    prefilled: tuple[np.ndarray, KVCache] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the next token of every row, ``[B]``, until every row hit a stop token, the
    engine's length limit, or ``max_new_tokens``. Finished rows repeat their stop token.

    ``input_ids [B, S]`` are left-padded (``attention_mask [B, S]``, default all ones) and go
    after ``cache`` (default empty). ``position_offset``: see :func:`prefill` (a compacted cache).
    ``prefilled``: ``(logits [B, V], cache)`` of :func:`prefill` already run on ``input_ids``
    after ``cache`` with the same ``steering``; decoding starts from it (no second prefill)."""
    input_ids = np.asarray(input_ids, np.int64)
    B = input_ids.shape[0]
    if B > engine.max_batch:
        raise ValueError(f"batch of {B} exceeds the engine's maximum batch {engine.max_batch}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    logits, cache, mask = prefill_prompt(engine, input_ids, attention_mask, cache, steering, prefill_chunk=prefill_chunk, progress=progress,
                                         position_offset=position_offset, prefilled=prefilled, buffers=True)
    stop = stop_token_ids if stop_token_ids is not None else engine.eos_token_ids
    rng = np.random.default_rng(sampling.seed)
    done = np.zeros(B, bool)
    last = np.zeros(B, np.int64)
    for step in range(max_new_tokens):
        tokens = sample(logits, sampling, rng)
        tokens = np.where(done, last, tokens)
        done |= np.isin(tokens, list(stop)) if stop else False
        last = tokens
        yield tokens
        if done.all() or step == max_new_tokens - 1 or mask.shape[1] + position_offset + 1 > engine.max_seq_len:
            return
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        logits, cache = decode_one_token(engine, tokens, mask, cache, steering, position_offset)
