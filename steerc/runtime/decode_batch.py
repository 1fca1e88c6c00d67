"""Continuous batching: rows that decode together, one engine call per step over all of them.

A :class:`DecodeBatch` holds the running rows of a server (or any caller that wants
continuous batching). Each row joins with its own prefilled KV cache, the logits of its
last prompt position, its steering bias, position offset, sampler and stop conditions
(:class:`BatchRow`), and leaves the moment it is finished, without disturbing the others.

KV layout: the rows' caches are stacked into one batch cache ``[B, Hkv, T, D]`` per layer,
``T`` the longest row's positions. Row ``r``'s ``n_r`` positions start at ``start_r``; its
attention mask holds ones on ``[start_r, start_r + n_r]`` (the new position included) and
zeros elsewhere, its steering bias is shifted by ``start_r`` so it lands on the same keys as in
a solo run, and its position ids count only its own positions (plus its compacted-cache
offset). Two placements:

* **left-padded** (every engine): rows end together at ``T`` (``start_r = T - n_r``); a step
  appends one position at ``T`` to every row. The padded keys get zero probability, but a
  row's attention sums run over ``T`` keys, not its own ``n_r``, so their rounding can differ
  from a solo run's in the last bits;
* **left-aligned** (in-place engines without a sliding window,
  :attr:`~steerc.runtime.engine.Engine.aligned_rows`): rows start together at 0 (``start_r =
  0``); the graph writes each row's new position at ``n_r``, after its own keys
  (GroupQueryAttention attends to those ``n_r + 1`` keys only; the standard ``Attention`` sees
  the rest masked, after them, at the indices they have alone). Every row then computes exactly
  as alone, bit for bit, which an int4 engine needs: its int8 activations turn last-bit
  differences into different tokens (measured: up to 0.7 in a logit of SmolLM2-135M int4
  left-padded, 0 left-aligned).

A step advances every row by one position, so the placement never changes between membership
changes. Joining copies the row's cache into
the batch (a registered context's stored KV is read, never written); leaving drops the row
and trims the padding every remaining row has. Both copy the batch KV once, which the concat
step graph does on every step anyway. On an in-place engine (``--kv in-place``) the batch
cache is :class:`~steerc.runtime.kv_buffers.KVBuffers`, rebuilt on membership changes in
their own dtype: an int8 cache is copied as int8 and only the joining row is quantized
(converting the whole batch to float and back cost 2.4 decode steps of four rows per join
on SmolLM2 int4 with the int8 cache, measured).

Greedy outputs equal those of :func:`~steerc.runtime.generate.generate` on each row alone:
the padded keys get zero probability and each row's logits depend on its own inputs only
(``tests/runtime/test_decode_batch.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import SamplingParams, sample
from steerc.runtime.kv_buffers import KVBuffers, round_capacity
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steer_bias import SteerBias

__all__ = ["BatchRow", "DecodeBatch"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class BatchRow:
    """One generation's decode state. ``logits [V]``: the last prompt position's (the first
    token is sampled from them); ``cache``: its KV after the prompt (one row, not modified).
    ``emit(token)`` is called with each token, ``finish(reason)`` once when the row leaves
    (``"stop"``, ``"length"``, ``"cancelled"``) and ``fail(exc)`` instead when a step fails."""

    logits: np.ndarray  # [V]
    cache: KVCache | KVBuffers  # [1, Hkv, n, D] per layer
    emit: Callable[[int], None]
    finish: Callable[[str], None] = lambda reason: None
    fail: Callable[[BaseException], None] = lambda exc: None
    max_new_tokens: int = 128
    sampling: SamplingParams = SamplingParams()
    steering: SteerBias | None = None
    stop_token_ids: frozenset[int] = frozenset()
    position_offset: int = 0
    cancelled: bool = False  # set from any thread; the row leaves at the next step boundary
    generated: int = 0
    length: int = field(init=False)  # positions in the row's cache (its own, no padding)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        if self.cache.batch != 1:
            raise ValueError(f"a batch row joins with a one-row cache, got {self.cache.batch} rows")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        self.logits = np.asarray(self.logits).reshape(-1)
        self.length = self.cache.length
        self.rng = np.random.default_rng(self.sampling.seed)


class DecodeBatch:
    """The rows decoding together on ``engine``: :meth:`add` rows, call :meth:`step` until
    :attr:`rows` is empty. At most ``max_rows`` rows (and the engine's ``max_batch``)."""

    def __init__(self, engine: Engine, max_rows: int | None = None) -> None:
        self.engine = engine
        self.max_rows = min(max_rows or engine.max_batch, engine.max_batch)
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.rows: list[BatchRow] = []
        self.cache: KVCache | KVBuffers | None = None  # [B, Hkv, T, D] per layer: rows left-aligned or left-padded (see the module doc)
        self.aligned = engine.aligned_rows  # rows start at 0 (else they end together at T)

    @property
    def width(self) -> int:
        """``T``: the batch cache's positions (padding included)."""
        return 0 if self.cache is None else self.cache.length

    @property
    def free(self) -> int:
        return self.max_rows - len(self.rows)

    # -- membership --------------------------------------------------------------------------
    def add(self, row: BatchRow) -> None:
        """Join ``row`` (its cache is copied into the batch). Refused when the batch is full or
        the row's cache does not fit the engine."""
        if not self.free:
            raise ValueError(f"the batch is full ({self.max_rows} rows)")
        new = self._row_arrays(row.cache)  # [1, Hkv, n, D] each, as the batch stores them
        if row.steering is not None:
            row.steering.check(self.engine.geometry.num_layers, self.engine.geometry.num_heads, 1)
        old = self._stored()
        T, W, n = max(self.width, row.cache.length), self.width, row.cache.length
        arrays = []
        for i, one in enumerate(new):
            B, H, _, D = old[i].shape if old else (0, one.shape[1], 0, one.shape[3])
            out = self._alloc((B + 1, H, T, D), one.dtype)  # [B+1, Hkv, T(+room), D]
            if old:
                out[:B, :, self._span(W, T)] = old[i]  # the rows so far: all start at 0, or all end at W
            out[B, :, self._span(n, T)] = one[0]
            arrays.append(out)
        self.rows.append(row)
        row.cache = None  # the batch holds it now; the caller's arrays are not referenced (or changed)
        self._store(arrays, T)

    def remove(self, rows) -> list[int]:
        """Drop ``rows`` from the batch and trim the padding every remaining row has; returns
        the indices (before the removal) of the rows kept."""
        gone = {id(r) for r in rows}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if len(keep) == len(self.rows):
            return keep
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = None
            return keep
        T = max(r.length for r in self.rows)  # the kept rows' longest: their positions, without the padding every one of them has
        arrays = []
        for x in self._stored():
            out = self._alloc((len(keep), x.shape[1], T, x.shape[3]), x.dtype)
            out[:, :, :T] = x[keep, :, self._span(T, self.width)]
            arrays.append(out)
        self._store(arrays, T)
        return keep

    def _span(self, n: int, T: int) -> slice:
        """Where ``n`` positions lie in a batch of width ``T``: from 0 (left-aligned) or ending at ``T``."""
        return slice(0, n) if self.aligned else slice(T - n, T)

    def _starts(self) -> np.ndarray:
        """``[B]``: where each row's positions start (0 left-aligned; ``T - n_r`` left-padded)."""
        lengths = np.array([r.length for r in self.rows], np.int64)
        return np.zeros_like(lengths) if self.aligned else self.width - lengths

    # -- the batch cache, as stored: int8 for an int8-cache engine, never converted on the way --
    def _row_arrays(self, cache: KVCache | KVBuffers) -> list[np.ndarray]:
        """A joining row's cache checked against the engine, as ``[1, Hkv, n, D]`` arrays of the
        batch's storage (an int8-cache engine's row quantized once; int8 buffers taken as they are)."""
        engine = self.engine
        if isinstance(cache, KVBuffers):
            if engine.kv_in_place and (cache.scales is None) == (engine.session.scales is None):
                shape, dtype, layers = cache.arrays[0].shape, cache.dtype, cache.num_layers
                self._check_fits(layers, shape[1], shape[3], dtype)
                return [x[:, :, : cache.length] for x in cache.arrays]
            cache = cache.to_cache()
        cache.check_layout(engine.keyless_layers, f"engine {engine.folder}")
        (_, kv_heads, _, head_dim), dtype = cache.values[0].shape, cache.values[0].dtype
        self._check_fits(len(cache.values), kv_heads, head_dim, dtype)
        if engine.kv_in_place:
            return [x[:, :, : cache.length] for x in engine.buffers_for(cache, cache.length, exact=True).arrays]
        return list(cache.flat())

    def _check_fits(self, layers: int, kv_heads: int, head_dim: int, dtype) -> None:
        g = self.engine.geometry
        if (layers, kv_heads, head_dim, np.dtype(dtype)) != (g.num_layers, g.num_kv_heads, g.head_dim, np.dtype(self.engine.kv_dtype)):
            raise ValueError(f"a KV cache of {layers} layers x {kv_heads} kv heads x {head_dim} ({np.dtype(dtype)}) does not fit engine "
                             f"{self.engine.folder} ({g.num_layers} x {g.num_kv_heads} x {g.head_dim}, {np.dtype(self.engine.kv_dtype)})")

    def _stored(self) -> list[np.ndarray]:
        """The batch cache's arrays ``[B, Hkv, T, D]`` as stored (views of the buffers)."""
        if self.cache is None:
            return []
        if isinstance(self.cache, KVBuffers):
            return [x[:, :, : self.cache.length] for x in self.cache.arrays]
        return list(self.cache.flat())

    def _alloc(self, shape: tuple[int, int, int, int], dtype) -> np.ndarray:
        """Zeros ``[B, Hkv, T, D]``; on an in-place engine with room for the next positions (the
        buffers' growth chunk), so the steps after a membership change write in place."""
        B, H, T, D = shape
        if self.engine.kv_in_place:
            T = round_capacity(T + 1, self.engine.kv_chunk, self.engine.max_seq_len)
        return np.zeros((B, H, T, D), dtype)

    def _store(self, arrays: list[np.ndarray], length: int) -> None:
        if self.engine.kv_in_place:
            self.cache = KVBuffers(arrays, length, self.engine.kv_chunk, self.engine.session.scales)
        else:
            self.cache = KVCache.from_flat(arrays, self.engine.keyless_layers)

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> int:
        """Sample every row's next token from its pending logits and emit it; rows that are
        done (stop token, ``max_new_tokens``, the engine's length limit) or cancelled leave;
        the others run one batched engine call. Returns the rows in that call (0: none ran).
        A failing call fails every row in it (``row.fail``) and empties the batch."""
        finished: list[tuple[BatchRow, str]] = []
        tokens = np.zeros(len(self.rows), np.int64)  # [B]
        for i, row in enumerate(self.rows):
            if row.cancelled:
                finished.append((row, "cancelled"))
                continue
            token = int(sample(row.logits[None], row.sampling, row.rng)[0])
            tokens[i] = token
            row.generated += 1
            row.emit(token)
            if token in row.stop_token_ids:
                finished.append((row, "stop"))
            elif row.generated >= row.max_new_tokens or row.length + row.position_offset + 1 > self.engine.max_seq_len:
                finished.append((row, "length"))
        if finished:
            tokens = tokens[self.remove([r for r, _ in finished])]
            for row, reason in finished:
                row.finish(reason)
        if not self.rows:
            return 0
        try:
            logits = self._forward(tokens)  # [B, V]
        except BaseException as exc:  # noqa: BLE001 - every row of the failed call hears of it
            log.exception("a batched decode step of %d rows failed", len(self.rows))
            rows, self.rows, self.cache = self.rows, [], None
            for row in rows:
                row.fail(exc)
            return 0
        for row, row_logits in zip(self.rows, logits):
            row.logits = row_logits
            row.length += 1
        return len(self.rows)

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        """One engine call: ``tokens [B]`` after the batch cache -> ``logits [B, V]``."""
        B, T = len(self.rows), self.width
        starts = self._starts()  # [B]
        ends = starts + np.array([r.length for r in self.rows], np.int64) + 1  # [B]: past each row's new position
        keys = np.arange(T + 1)[None, :]
        mask = ((keys >= starts[:, None]) & (keys < ends[:, None])).astype(np.int64)  # [B, T+1], 0 off the row's positions
        positions = np.array([[r.length + r.position_offset] for r in self.rows], np.int64)  # [B, 1]
        g = self.engine.geometry
        bias = np.zeros((B, g.num_layers, g.num_heads, T + 1), np.float32)  # [B, L, H, T+1]
        for i, row in enumerate(self.rows):
            if row.steering is None:
                continue
            own = row.steering.bias[0] if row.steering.bias.ndim == 4 else row.steering.bias  # [L, H, K] over the row's own keys
            start = int(starts[i])
            k = min(own.shape[-1], int(ends[i]) - start)
            bias[i, :, :, start : start + k] = own[..., :k]
        logits, self.cache = self.engine.forward(tokens[:, None], positions, mask, self.cache, bias)
        return logits[:, -1]
