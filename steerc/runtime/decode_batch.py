"""Continuous batching: rows that decode together, one engine call per step over all of them.

A :class:`DecodeBatch` holds the running rows of a server (or any caller that wants
continuous batching). Each row joins with its own prefilled KV cache, the logits of its
last prompt position, its steering bias, position offset, sampler and stop conditions
(:class:`BatchRow`), and leaves the moment it is finished, without disturbing the others.

KV layout: the rows' caches are stacked into one left-padded batch cache ``[B, Hkv, T, D]``
per layer. Row ``r`` holds its ``n_r`` positions right-aligned, after ``pad_r = T - n_r``
zero positions that its attention mask hides; its steering bias is shifted by ``pad_r`` so
it lands on the same keys as in a solo run, and its position ids count only its own
positions (plus its compacted-cache offset). A step appends one position to every row, so
the padding never changes between membership changes. Joining copies the row's cache into
the batch (a registered context's stored KV is read, never written); leaving drops the row
and trims the padding every remaining row has. Both copy the batch KV once, which the concat
step graph does on every step anyway. On an in-place engine (``--kv in-place``) the batch
cache is :class:`~steerc.runtime.kv_buffers.KVBuffers`, rebuilt on membership changes.

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
from steerc.runtime.kv_buffers import KVBuffers
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
        self.cache: KVCache | KVBuffers | None = None  # [B, Hkv, T, D] per layer, left-padded
        self.pads = np.zeros(0, np.int64)  # [B] padding positions in front of each row

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
        cache = row.cache.to_cache() if isinstance(row.cache, KVBuffers) else row.cache
        cache.check_layout(self.engine.keyless_layers, f"engine {self.engine.folder}")
        g, (_, kv_heads, _, head_dim) = self.engine.geometry, cache.values[0].shape
        if (len(cache.values), kv_heads, head_dim, cache.values[0].dtype) != (g.num_layers, g.num_kv_heads, g.head_dim, np.dtype(self.engine.kv_dtype)):
            raise ValueError(f"a KV cache of {len(cache.values)} layers x {kv_heads} kv heads x {head_dim} ({cache.values[0].dtype}) does not fit engine "
                             f"{self.engine.folder} ({g.num_layers} x {g.num_kv_heads} x {g.head_dim}, {np.dtype(self.engine.kv_dtype)})")
        if row.steering is not None:
            row.steering.check(self.engine.geometry.num_layers, self.engine.geometry.num_heads, 1)
        old = self._flat()
        T = max(self.width, cache.length)
        arrays = []
        for i, new in enumerate(cache.flat()):
            B, H, _, D = old[i].shape if old else (0, *new.shape[1:2], 0, new.shape[3])
            out = np.zeros((B + 1, H, T, D), new.dtype)  # [B+1, Hkv, T, D]
            if old:
                out[:B, :, T - self.width :] = old[i]
            out[B, :, T - cache.length :] = new[0]
            arrays.append(out)
        self.pads = np.append(self.pads + (T - self.width), T - cache.length)
        self.rows.append(row)
        row.cache = None  # the batch holds it now; the caller's arrays are not referenced (or changed)
        self._set(arrays)

    def remove(self, rows) -> list[int]:
        """Drop ``rows`` from the batch and trim the padding every remaining row has; returns
        the indices (before the removal) of the rows kept."""
        gone = {id(r) for r in rows}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if len(keep) == len(self.rows):
            return keep
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.pads = None, np.zeros(0, np.int64)
            return keep
        pads = self.pads[keep]
        trim = int(pads.min())
        self._set([np.ascontiguousarray(a[keep, :, trim:]) for a in self._flat()])
        self.pads = pads - trim
        return keep

    def _flat(self) -> list[np.ndarray]:
        if self.cache is None:
            return []
        cache = self.cache.to_cache() if isinstance(self.cache, KVBuffers) else self.cache
        return list(cache.flat())

    def _set(self, arrays: list[np.ndarray]) -> None:
        cache = KVCache.from_flat(arrays, self.engine.keyless_layers)
        self.cache = self.engine.buffers_for(cache, cache.length + 1) if self.engine.kv_in_place else cache

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
            rows, self.rows, self.cache, self.pads = self.rows, [], None, np.zeros(0, np.int64)
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
        mask = (np.arange(T + 1)[None, :] >= self.pads[:, None]).astype(np.int64)  # [B, T+1], 0 on padding
        positions = np.array([[r.length + r.position_offset] for r in self.rows], np.int64)  # [B, 1]
        g = self.engine.geometry
        bias = np.zeros((B, g.num_layers, g.num_heads, T + 1), np.float32)  # [B, L, H, T+1]
        for i, row in enumerate(self.rows):
            if row.steering is None:
                continue
            own = row.steering.bias[0] if row.steering.bias.ndim == 4 else row.steering.bias  # [L, H, K] over the row's own keys
            k = min(own.shape[-1], T + 1 - int(self.pads[i]))
            bias[i, :, :, self.pads[i] : self.pads[i] + k] = own[..., :k]
        logits, self.cache = self.engine.forward(tokens[:, None], positions, mask, self.cache, bias)
        return logits[:, -1]
