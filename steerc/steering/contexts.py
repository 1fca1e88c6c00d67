"""Prepare a context once, store it, reuse it for every later query.

:func:`prepare_context` is the generic part every steering method shares: the entry key
(engine, context tokens, instruction-head tokens, the method's key fields), the store lookup,
the per-key lock that makes concurrent preparations of one entry run once, and the write.
What is computed on a miss is the method's :meth:`~steerc.steering.methods.SteeringMethod.build`,
given a :class:`BuildJob` with the building blocks below:

* :meth:`BuildJob.plain_kv`: the plain KV of ``head + context``, from the store's plain entry
  (``method none``) or one plain prefill, which is then stored as that entry. Every method that
  steers at query time (``steer_at = decode``) starts from it, so one context's KV is computed
  once whatever methods ask for it.
* :meth:`BuildJob.dual_importance`: LLMSteer's two importance prefills (stored too, keyed by the
  prefixes and ``window`` only), whose first pass also yields the plain KV.
* :meth:`BuildJob.finish`: the KV to store (plain, or a third, steered prefill for ``steer_at``
  ``prefill``/``both``) and the :class:`PreparedContext`.

Entries are keyed so that a hit is always the same computation; a corrupt entry is dropped by
the store and recomputed. A prepared context's KV is stored once, apart from the entries that
use it (:mod:`steerc.steering.stored_kv`): every entry of one context names the same KV.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, prefill
from steerc.runtime.kv_cache import KVCache, describe_layout
from steerc.runtime.steering import Steering
from steerc.steering.config import SteerConfig
from steerc.steering.selection import importance_prefill
from steerc.steering.stored_kv import compacted_kv_key, kv_key, kv_of_tensors, load_kv, load_prepared, save_prepared
from steerc.stores import ContextStore, StoredContext, context_key

if TYPE_CHECKING:
    from steerc.steering.methods.base import SteeringMethod

__all__ = ["BuildJob", "PreparedContext", "Progress", "get_or_build", "intermediate_keys", "plain_key", "prepare_context", "store_key", "lookup", "locked"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class PreparedContext:
    key: str
    config: SteerConfig
    head_ids: np.ndarray  # [Nh] int64, the instruction head the stored KV was built behind
    context_ids: np.ndarray  # [N] int64
    kv: KVCache  # batch 1, Nh + N positions
    selected: np.ndarray  # [L, N] bool (all True when nothing is emphasised)
    importance: np.ndarray  # [passes, L, N] float32 (passes = 0 without an importance pass)
    bias: np.ndarray  # [L, H, Nh + N] float32, the bias over the stored keys (a compacted context: over the K kept ones)
    meta: dict = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # method-specific tensors (e.g. query's calibration)
    positions: np.ndarray | None = None  # [K] int64: original position of each stored key of a compacted context; None: all Nh + N
    kv_key: str | None = None  # the content address of ``kv`` in the store (steerc.steering.stored_kv.kv_key)

    @property
    def length(self) -> int:
        return self.kv.length

    @property
    def full_length(self) -> int:
        """Positions of ``head + context`` (what later tokens' positions continue from)."""
        return len(self.head_ids) + len(self.context_ids)

    @property
    def position_offset(self) -> int:
        """Positions a compacted context dropped (0 when every key is stored)."""
        return self.full_length - self.kv.length

    def on_stored_keys(self, values: np.ndarray) -> np.ndarray:
        """``[..., Nh + N]`` over every position -> ``[..., K]`` over the stored keys."""
        return values if self.positions is None else np.take(values, self.positions, axis=-1)

    def on_all_keys(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``[..., K (+ S)]`` over the stored keys (and any later ones) -> ``[..., Nh + N (+ S)]``;
        dropped positions get ``fill``."""
        if self.positions is None:
            return values
        K = self.kv.length
        out = np.full((*values.shape[:-1], self.full_length + values.shape[-1] - K), fill, values.dtype)
        out[..., self.positions] = values[..., :K]
        out[..., self.full_length :] = values[..., K:]
        return out

    def compacted(self, positions: np.ndarray) -> "PreparedContext":
        """This context with only the keys at ``positions`` (original positions, ascending) stored."""
        from dataclasses import replace

        positions = np.asarray(positions, np.int64)
        if self.positions is not None:
            raise ValueError("this context is compacted already")
        kv_key = compacted_kv_key(self.kv_key, positions) if self.kv_key is not None else None
        return replace(self, kv=self.kv.take(positions), positions=positions, bias=np.take(self.bias, positions, axis=-1), kv_key=kv_key)

    @property
    def num_selected(self) -> int:
        """Context tokens selected on at least one layer."""
        return int(self.selected.any(0).sum())

    @property
    def selected_per_layer(self) -> float:
        """Mean number of context tokens selected per layer."""
        return float(self.selected.sum(1).mean())

    def query_steering(self) -> Steering | None:
        """The stored bias later tokens apply to the stored keys (None when nothing is steered at query time)."""
        if self.config.steer_at == "prefill" or not self.bias.any():
            return None
        return Steering(self.bias if self.bias.shape[-1] == self.kv.length else self.on_stored_keys(self.bias))

    def to_stored(self) -> StoredContext:
        """The entry, without its KV: that is stored once, under ``kv_key``, and the entry names it
        (:mod:`steerc.steering.stored_kv`). An all-zero bias is stored as its shape."""
        if self.kv_key is None:
            raise ValueError("this prepared context has no kv_key; store it with steerc.steering.stored_kv.save_prepared")
        tensors = dict(head_ids=self.head_ids, context_ids=self.context_ids, selected=self.selected, importance=self.importance)
        meta = {"config": self.config.to_dict(), **self.meta, "kv_key": self.kv_key, "kv_length": self.kv.length, "kv_keyless": list(self.kv.keyless)}
        if self.bias.any():
            tensors["bias"] = self.bias
        else:
            meta["bias_shape"] = list(self.bias.shape)
        tensors.update({f"extra.{k}": v for k, v in self.extras.items()})
        if self.positions is not None:
            tensors["positions"] = self.positions
        return StoredContext(tensors, meta)

    @classmethod
    def from_stored(cls, key: str, entry: StoredContext, kv: KVCache | None = None) -> "PreparedContext":
        """The prepared context of ``entry`` with ``kv``, the KV it names (``meta["kv_key"]``); an
        entry of the earlier format carries its KV inside (``kv.*`` tensors), then ``kv`` is None.
        Raises ValueError when the parts do not fit together."""
        t, meta = entry.tensors, dict(entry.meta)
        if kv is None:
            if "kv.0" not in t:
                raise ValueError(f"stored context {key[:12]}… holds no KV and none was given")
            kv = kv_of_tensors(t, t.get("kv_keyless", ()))
        kv_key = meta.pop("kv_key", None)
        length, keyless = meta.pop("kv_length", kv.length), tuple(meta.pop("kv_keyless", kv.keyless))
        if kv.length != length or tuple(kv.keyless) != keyless:
            raise ValueError(f"stored context {key[:12]}… expects a KV of {length} positions ({describe_layout(keyless)}), "
                             f"its KV has {kv.length} ({describe_layout(kv.keyless)})")
        bias_shape = meta.pop("bias_shape", None)
        bias = t["bias"] if bias_shape is None else np.zeros(bias_shape, np.float32)
        config = SteerConfig.from_dict(meta.pop("config"))
        extras = {n[len("extra.") :]: v for n, v in t.items() if n.startswith("extra.")}
        positions = t.get("positions")
        if positions is not None and (positions.shape != (kv.length,) or (len(positions) and positions.max() >= len(t["head_ids"]) + len(t["context_ids"]))):
            raise ValueError(f"stored context {key[:12]}… is inconsistent: {len(positions)} key positions for a KV of {kv.length}")
        return cls(key, config, t["head_ids"], t["context_ids"], kv, t["selected"], t["importance"], bias, meta, extras, positions, kv_key)


def store_key(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, fields: dict) -> str:
    """The entry key of a context behind ``heads`` with the given key fields."""
    return context_key(engine.engine_id, np.asarray(context_ids).tolist(), json.dumps([np.asarray(h).tolist() for h in heads]), fields)


def _importance_key(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, window: int) -> str:
    return store_key(engine, heads, context_ids, {"importance": "dual-prefix", "window": window})


def plain_key(engine: Engine, head: np.ndarray, context_ids: np.ndarray) -> str:
    """The key of the plain context (``method none``) behind ``head``."""
    return store_key(engine, [head], context_ids, {"method": "none"})


def locked(store: ContextStore | None, key: str):
    """Hold ``key`` in the store (so concurrent preparations of one entry run once)."""
    return store.lock(key) if store is not None else contextlib.nullcontext()


def lookup(store: ContextStore | None, key: str) -> tuple[StoredContext | None, str]:
    return store.lookup(key) if store is not None else (None, "miss")


def get_or_build(store: ContextStore | None, key: str, build: Callable[[], StoredContext]) -> tuple[StoredContext, str]:
    """The entry under ``key`` and its tier, or ``build()``'s, stored, and ``"miss"``; concurrent
    callers for one new key build it once (the others wait on the key's lock, then hit)."""
    entry, tier = lookup(store, key)
    if entry is not None:
        return entry, tier
    with locked(store, key):
        entry, tier = lookup(store, key)
        if entry is not None:
            return entry, tier
        entry = build()
        if store is not None:
            store.put(key, entry)
        return entry, "miss"


def intermediate_keys(engine: Engine, heads: list[np.ndarray], context_ids: np.ndarray, window: int) -> list[str]:
    """The keys of a context's shared intermediate entries: its plain KV behind ``heads[0]``
    and (with two heads) its dual-prefix importance; deleting a context removes these too."""
    context_ids = np.asarray(context_ids, np.int64)
    keys = [plain_key(engine, np.asarray(heads[0], np.int64), context_ids)]
    if len(heads) >= 2:
        keys.append(_importance_key(engine, [np.asarray(h, np.int64) for h in heads[:2]], context_ids, window))
    return keys


@dataclass
class BuildJob:
    """Everything a method's ``build`` needs to compute one entry, and the shared building blocks."""

    engine: Engine
    heads: list[np.ndarray]  # instruction heads' token ids; the stored KV is built behind heads[0]
    context_ids: np.ndarray  # [N]
    config: SteerConfig
    key: str
    highlight: np.ndarray | None  # [N] bool, or None
    base_kv: KVCache | None  # the plain KV of heads[0] + context, when the caller has it
    store: ContextStore | None
    chunk: int
    progress: Progress | None
    start: float = field(default_factory=time.perf_counter)

    @property
    def head(self) -> np.ndarray:
        return self.heads[0]

    def report(self, stage: str) -> Callable[[int, int], None] | None:
        progress = self.progress
        return (lambda done, total: progress(stage, done, total)) if progress else None

    def plain_kv(self) -> KVCache:
        """The plain KV of ``head + context``: given, stored, or prefilled now (and stored)."""
        if self.base_kv is not None:
            return self.base_kv
        key = plain_key(self.engine, self.head, self.context_ids)
        with locked(self.store, key):
            plain, _ = load_prepared(self.store, key)
            if plain is not None:
                self.base_kv = plain.kv
                return self.base_kv
            kv = self.stored_or_prefilled_kv()
            self._store_plain(kv)
        return kv

    def stored_or_prefilled_kv(self) -> KVCache:
        """The plain KV from the store's KV entry (it may outlive the plain entry, or be written
        before it), else one plain prefill (not stored here)."""
        kv, _ = load_kv(self.store, kv_key(self.engine.engine_id, self.head, self.context_ids))
        if kv is None:
            return self.prefill_plain()
        self.base_kv = kv
        return kv

    def prefill_plain(self) -> KVCache:
        """One plain prefill of ``head + context`` (not looked up, not stored)."""
        ids = np.concatenate([self.head, self.context_ids])  # [Nh + N]
        _, kv = prefill(self.engine, ids[None], np.ones((1, len(ids)), np.int64), self.engine.new_cache(1), chunk=self.chunk, progress=self.report("prefill"))
        self.base_kv = kv
        return kv

    def _store_plain(self, kv: KVCache) -> None:
        if self.store is not None:
            save_prepared(self.store, plain_context(self.engine, self.head, self.context_ids, kv, time.perf_counter() - self.start))

    def dual_importance(self, window: int) -> np.ndarray:
        """``importance [2, L, N]``: LLMSteer's two passes (heads summed), from or to the store;
        the first pass's KV becomes the plain KV when there is none yet."""
        key = _importance_key(self.engine, self.heads, self.context_ids, window)
        with locked(self.store, key):
            entry, _ = lookup(self.store, key)
            if entry is not None:
                return entry.tensors["importance"]
            passes = []
            for i, h in enumerate(self.heads):
                imp, cache = importance_prefill(self.engine, np.concatenate([h, self.context_ids]), window=window, chunk=self.chunk,
                                                progress=self.report(f"importance pass {i + 1}/2"))
                passes.append(imp[:, :, len(h) :].sum(1))  # [L, N], heads summed
                if i == 0 and self.base_kv is None:
                    self.base_kv = cache  # the analysis graph's KV equals the plain graph's
                    self._store_plain(cache)
            importance = np.stack(passes)  # [2, L, N]
            if self.store is not None:
                self.store.put(key, StoredContext({"importance": importance}, {"kind": "importance", "window": window}))
            return importance

    def finish(self, selected: np.ndarray, bias: np.ndarray, importance: np.ndarray | None = None, extras: dict | None = None) -> "PreparedContext":
        """The prepared context: the plain KV, or with ``steer_at`` prefill/both the KV of a steered prefill."""
        config = self.config
        if config.steer_at in ("prefill", "both") and bias.any():
            name = kv_key(self.engine.engine_id, self.head, self.context_ids, bias)
            kv, _ = load_kv(self.store, name)  # another entry's steered prefill may have made this very KV
            if kv is None:
                ids = np.concatenate([self.head, self.context_ids])
                _, kv = prefill(self.engine, ids[None], np.ones((1, len(ids)), np.int64), self.engine.new_cache(1), Steering(bias), chunk=self.chunk,
                                progress=self.report("steered prefill"))
        else:
            kv, name = self.plain_kv(), kv_key(self.engine.engine_id, self.head, self.context_ids)
        g, N = self.engine.geometry, len(self.context_ids)
        importance = np.zeros((0, g.num_layers, N), np.float32) if importance is None else importance
        seconds = time.perf_counter() - self.start
        meta = {"prepare_seconds": seconds, "context_tokens": N, "head_tokens": len(self.head)}
        return PreparedContext(self.key, config, self.head, self.context_ids, kv, selected, importance, bias, meta, extras or {}, kv_key=name)


def plain_context(engine: Engine, head: np.ndarray, context_ids: np.ndarray, kv: KVCache, seconds: float) -> PreparedContext:
    """The ``method none`` entry: the plain KV, nothing selected, no bias."""
    g, N, Nh = engine.geometry, len(context_ids), len(head)
    return PreparedContext(plain_key(engine, head, context_ids), SteerConfig(method="none"), head, context_ids, kv, np.ones((g.num_layers, N), bool),
                           np.zeros((0, g.num_layers, N), np.float32), np.zeros((g.num_layers, g.num_heads, Nh + N), np.float32),
                           {"prepare_seconds": seconds, "context_tokens": N, "head_tokens": Nh}, kv_key=kv_key(engine.engine_id, head, context_ids))


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
    method: "SteeringMethod | None" = None,
) -> tuple[PreparedContext, str]:
    """Return the prepared context and where it came from: the store's tier (``"memory"``,
    ``"disk"``, ``"redis"``) for a hit, ``"miss"`` when it was computed (and stored). Concurrent
    calls for one new entry prepare it once (``store.lock``); the others wait and hit. ``heads``
    are the instruction heads' token ids (the method uses as many as it needs; the stored KV uses
    the first); ``highlight [N]`` marks emphasised tokens (pasta); ``base_kv``, the plain KV of
    ``heads[0] + context`` if the caller has it, saves the plain prefill (so does a stored plain
    context). ``method`` defaults to ``config.method``'s."""
    from steerc.steering.methods import get_method

    method = method or get_method(config.method)
    g = engine.geometry
    context_ids = np.asarray(context_ids, np.int64)
    if len(heads) < method.instruction_heads:
        raise ValueError(f"{method.name} needs {method.instruction_heads} instruction heads (one per prefix), got {len(heads)}")
    heads = [np.asarray(h, np.int64) for h in heads[: method.instruction_heads]]
    method.check_inputs(config, context_ids, highlight)
    engine.check_length(len(heads[0]) + len(context_ids) + 1, f"the context ({len(context_ids)} tokens behind a {len(heads[0])}-token instruction, plus one to generate)")
    config.steered_pairs(g.num_layers, g.num_heads)  # refuse layers/heads beyond the engine before any work
    # The highlighted tokens join the key (pasta's character ranges are in the config already).
    key = store_key(engine, heads + ([highlight.astype(np.int64)] if highlight is not None else []), context_ids, method.key_fields(config))
    prepared, tier = load_prepared(store, key)
    if prepared is None:
        with locked(store, key):  # a concurrent request may be preparing it: wait, then look again
            prepared, tier = load_prepared(store, key)
            if prepared is None:
                job = BuildJob(engine, heads, context_ids, config, key, highlight, base_kv, store, chunk, progress)
                prepared = method.build(job)
                log.info("context %s… prepared in %.2f s (%s, %d of %d tokens selected)", key[:12], prepared.meta.get("prepare_seconds", 0.0), method.name,
                         prepared.num_selected, len(context_ids))
                if prepared.key == key:
                    save_prepared(store, prepared)
                return prepared, "miss"
    log.info("context %s…: %s hit", key[:12], tier)
    return prepared, tier
