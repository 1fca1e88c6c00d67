"""Prepare a context once, store it, reuse it for every later query.

``prepare_context`` (token level) does, for ``method``:

* ``none``: one plain prefill of ``head + context``; no bias.
* ``llmsteer``: prefill ``head_1 + context`` and ``head_2 + context`` on the analysis graph;
  per layer, the top-k context tokens of each pass (importance summed over heads), intersected;
  bias ``log(alpha)`` on the other context keys of the steered layers/heads.
* ``pasta``: the selection is given (highlighted tokens, the same on every layer).

``steer_at`` decides what is stored: ``decode`` keeps the plain KV of pass 1 (the analysis
graph's KV equals the plain graph's) and the bias is applied at query time; ``prefill`` and
``both`` run a third, steered prefill whose KV is stored (``both`` also applies the bias at
query time). Entries are keyed by engine, context tokens, prefix tokens and config, so a hit
is always the same computation; a corrupt entry is dropped by the store and recomputed.

Two intermediate results are stored too, so other configurations of the same context start
from them: the plain context (``method none``, pass 1's KV) and the two passes' importance
(keyed by prefixes and ``window`` only). A new ``alpha``, ``top_k``, layer set or highlight on
a known context then costs no prefill at all with ``steer_at = decode``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steering import Steering
from steerc.steering.config import SteerConfig
from steerc.steering.selection import importance_prefill, select_tokens, steering_bias
from steerc.stores import ContextStore, StoredContext, context_key

__all__ = ["PreparedContext", "intermediate_keys", "prepare_context"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class PreparedContext:
    key: str
    config: SteerConfig
    head_ids: np.ndarray  # [Nh] int64, the instruction head the stored KV was built behind
    context_ids: np.ndarray  # [N] int64
    kv: KVCache  # batch 1, Nh + N positions
    selected: np.ndarray  # [L, N] bool (all True for method none)
    importance: np.ndarray  # [passes, L, N] float32 (passes = 0 without an importance pass)
    bias: np.ndarray  # [L, H, Nh + N] float32, the bias over the stored keys
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.kv.length

    @property
    def num_selected(self) -> int:
        """Context tokens selected on at least one layer."""
        return int(self.selected.any(0).sum())

    @property
    def selected_per_layer(self) -> float:
        """Mean number of context tokens selected per layer."""
        return float(self.selected.sum(1).mean())

    def query_steering(self) -> Steering | None:
        """The bias later tokens apply to the stored keys (None when nothing is steered at query time)."""
        if self.config.method == "none" or self.config.steer_at == "prefill":
            return None
        return Steering(self.bias)

    def to_stored(self) -> StoredContext:
        tensors = {f"kv.{i}": a for i, a in enumerate(self.kv.flat())}
        tensors.update(head_ids=self.head_ids, context_ids=self.context_ids, selected=self.selected, importance=self.importance, bias=self.bias)
        return StoredContext(tensors, {"config": self.config.to_dict(), **self.meta})

    @classmethod
    def from_stored(cls, key: str, entry: StoredContext) -> "PreparedContext":
        t = entry.tensors
        kv = KVCache.from_flat([t[f"kv.{i}"] for i in range(sum(1 for n in t if n.startswith("kv.")))])
        meta = {k: v for k, v in entry.meta.items() if k != "config"}
        return cls(key, SteerConfig.from_dict(entry.meta["config"]), t["head_ids"], t["context_ids"], kv, t["selected"], t["importance"], t["bias"], meta)


def store_key(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, config: SteerConfig | dict) -> str:
    """The entry key of a context behind ``heads`` under ``config`` (or raw key fields)."""
    fields = config.cache_fields() if isinstance(config, SteerConfig) else config
    return context_key(engine.engine_id, context_ids.tolist(), json.dumps([h.tolist() for h in heads]), fields)


def _importance_key(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, window: int) -> str:
    return store_key(engine, heads, context_ids, {"importance": "dual-prefix", "window": window})


def _plain_key(engine: Engine, head: np.ndarray, context_ids: np.ndarray) -> str:
    """The key of the plain context (``method none``) behind ``head``: pass 1's KV."""
    return store_key(engine, [head], context_ids, SteerConfig(method="none"))


def _locked(store: ContextStore | None, key: str):
    """Hold ``key`` in the store (so concurrent preparations of one entry run once)."""
    return store.lock(key) if store is not None else contextlib.nullcontext()


def intermediate_keys(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, window: int) -> list[str]:
    """The keys of a context's shared intermediate entries: its plain KV behind ``heads[0]``
    and (with two heads) its dual-prefix importance; deleting a context removes these too."""
    context_ids = np.asarray(context_ids, np.int64)
    keys = [_plain_key(engine, np.asarray(heads[0], np.int64), context_ids)]
    if len(heads) >= 2:
        keys.append(_importance_key(engine, [np.asarray(h, np.int64) for h in heads[:2]], context_ids, window))
    return keys


def _lookup(store: ContextStore | None, key: str) -> tuple[StoredContext | None, str]:
    return store.lookup(key) if store is not None else (None, "miss")


def _plain(engine: Engine, head: np.ndarray, context_ids: np.ndarray, kv: KVCache, seconds: float) -> PreparedContext:
    g, config = engine.geometry, SteerConfig(method="none")
    N, Nh = len(context_ids), len(head)
    return PreparedContext(_plain_key(engine, head, context_ids), config, head, context_ids, kv, np.ones((g.num_layers, N), bool),
                           np.zeros((0, g.num_layers, N), np.float32), np.zeros((g.num_layers, g.num_heads, Nh + N), np.float32),
                           {"prepare_seconds": seconds, "context_tokens": N, "head_tokens": Nh})


def _dual_importance(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, kv: KVCache | None, window: int,
                     store: ContextStore | None, chunk: int, report) -> tuple[np.ndarray, KVCache | None]:
    """``(importance [2, L, N], plain KV of heads[0] + context or the given one)``; both come
    from (and go to) the store when there is one."""
    key = _importance_key(engine, heads, context_ids, window)
    with _locked(store, key):
        entry, _ = _lookup(store, key)
        if entry is not None:
            return entry.tensors["importance"], kv
        return _compute_importance(engine, heads, context_ids, kv, window, store, chunk, report, key)


def _compute_importance(engine, heads, context_ids, kv, window, store, chunk, report, key) -> tuple[np.ndarray, KVCache | None]:
    start, passes = time.perf_counter(), []
    for i, h in enumerate(heads):
        imp, cache = importance_prefill(engine, np.concatenate([h, context_ids]), window=window, chunk=chunk, progress=report(f"importance pass {i + 1}/2"))
        passes.append(imp[:, :, len(h) :].sum(1))  # [L, N], heads summed
        if i == 0 and kv is None:
            kv = cache  # the analysis graph's KV equals the plain graph's
            if store is not None:
                plain = _plain(engine, h, context_ids, kv, time.perf_counter() - start)
                store.put(plain.key, plain.to_stored())
    importance = np.stack(passes)  # [2, L, N]
    if store is not None:
        store.put(key, StoredContext({"importance": importance}, {"kind": "importance", "window": window}))
    return importance, kv


def prepare_context(
    engine: Engine,
    heads: list[np.ndarray],
    context_ids: np.ndarray,
    config: SteerConfig,
    *,
    highlight: np.ndarray | None = None,
    base_kv: KVCache | None = None,
    store: ContextStore | None = None,
    chunk: int = DEFAULT_PREFILL_CHUNK,
    progress: Progress | None = None,
) -> tuple[PreparedContext, str]:
    """Return the prepared context and where it came from: the store's tier (``"memory"``,
    ``"disk"``, ``"redis"``) for a hit, ``"miss"`` when it was computed (and stored). Concurrent
    calls for one new entry prepare it once (``store.lock``); the others wait and hit. ``heads`` are the
    instruction heads' token ids (two for llmsteer, the first is the one the stored KV uses);
    ``highlight [N]`` marks the tokens pasta emphasises; ``base_kv``, the plain KV of
    ``heads[0] + context`` if the caller has it, saves the plain prefill (so does a stored
    plain context)."""
    g = engine.geometry
    context_ids = np.asarray(context_ids, np.int64)
    heads = [np.asarray(h, np.int64) for h in heads[: 2 if config.method == "llmsteer" else 1]]
    if config.method == "llmsteer" and len(heads) != 2:
        raise ValueError("llmsteer needs two instruction heads (one per prefix)")
    if config.method in ("pasta", "autopasta") and (highlight is None or highlight.shape != context_ids.shape or not highlight.any()):
        raise ValueError(f"{config.method} needs a highlight mask with a True entry for each of the {len(context_ids)} context tokens it emphasises")
    engine.check_length(len(heads[0]) + len(context_ids) + 1, f"the context ({len(context_ids)} tokens behind a {len(heads[0])}-token instruction, plus one to generate)")
    config.steered_pairs(g.num_layers, g.num_heads)  # refuse layers/heads beyond the engine before any work
    # The highlighted tokens join the key (pasta's character ranges are in the config already).
    key = store_key(engine, heads + ([highlight.astype(np.int64)] if highlight is not None else []), context_ids, config)
    entry, tier = _lookup(store, key)
    if entry is None:
        with _locked(store, key):  # a concurrent request may be preparing it: wait, then look again
            entry, tier = _lookup(store, key)
            if entry is None:
                return _prepare(engine, heads, context_ids, config, key, highlight, base_kv, store, chunk, progress), "miss"
    log.info("context %s…: %s hit", key[:12], tier)
    return PreparedContext.from_stored(key, entry), tier


def _prepare(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, config: SteerConfig, key: str, highlight: np.ndarray | None,
             base_kv: KVCache | None, store: ContextStore | None, chunk: int, progress: Progress | None) -> PreparedContext:
    """Compute (and store) the prepared context under ``key``; see :func:`prepare_context`."""
    g, head = engine.geometry, heads[0]
    ids = np.concatenate([head, context_ids])  # [Nh + N]
    pairs = config.steered_pairs(g.num_layers, g.num_heads)
    start = time.perf_counter()
    report = (lambda stage: (lambda done, total: progress(stage, done, total))) if progress else (lambda stage: None)
    N, Nh = len(context_ids), len(head)
    importance = np.zeros((0, g.num_layers, N), np.float32)
    kv = base_kv
    if kv is None and config.method != "none" and config.steer_at == "decode":
        plain, _ = _lookup(store, _plain_key(engine, head, context_ids))
        kv = PreparedContext.from_stored("", plain).kv if plain is not None else None
    if config.method == "llmsteer":
        importance, kv = _dual_importance(engine, heads, context_ids, kv, config.window, store, chunk, report)
        selected = select_tokens(importance[0], importance[1], config.top_k)
    elif config.method == "none":
        selected = np.ones((g.num_layers, N), bool)
    else:
        selected = np.broadcast_to(highlight, (g.num_layers, N)).copy()
    bias = steering_bias(selected, Nh, Nh + N, g.num_heads, config.alpha, pairs) if config.method != "none" else np.zeros((g.num_layers, g.num_heads, Nh + N), np.float32)
    if kv is None or config.steer_at in ("prefill", "both"):
        steering = Steering(bias) if config.method != "none" and config.steer_at in ("prefill", "both") else None
        mask = np.ones((1, len(ids)), np.int64)
        _, kv = prefill(engine, ids[None], mask, engine.new_cache(1), steering, chunk=chunk, progress=report("steered prefill" if steering else "prefill"))
    seconds = time.perf_counter() - start
    prepared = PreparedContext(key, config, head, context_ids, kv, selected, importance, bias, {"prepare_seconds": seconds, "context_tokens": N, "head_tokens": Nh})
    log.info("context %s… prepared in %.2f s (%s, %d of %d tokens selected)", key[:12], seconds, config.method, prepared.num_selected, N)
    if store is not None:
        store.put(key, prepared.to_stored())
    return prepared
