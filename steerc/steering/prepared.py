"""A prepared context and how it is kept in a context store.

:class:`PreparedContext` is what a steering method prepares once per context: the instruction
head and context tokens, the KV the question attends to, the selection, importance and bias,
and method-specific tensors. How it is built is :mod:`steerc.steering.contexts`'; this module
is its stored form.

Its KV is stored once, apart from the entries that use it (:mod:`steerc.steering.stored_kv`),
under the hash of what produced it; the prepared entry holds the rest and names its KV:

* :func:`save_prepared` writes the KV when the store lacks it, marks the entry as one of its
  holders (``store.add_ref``), then writes the entry. Both parts are checksummed entries.
* :func:`load_prepared` reads the entry, then its KV. A KV that is missing (evicted, deleted) or
  was corrupt (the store drops it) makes the entry a miss: it is recomputed and both parts are
  written again. Entries of the earlier format, with the KV inside, are still read.
* :func:`delete_prepared` deletes an entry and, when it was the KV's last holder, the KV.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from steerc.runtime.kv_cache import KVCache, describe_layout
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.config import SteerConfig
from steerc.steering.keys import compacted_kv_key, content_kv_key
from steerc.steering.stored_kv import kv_of_tensors, load_kv, save_kv
from steerc.stores import ContextStore, StoredContext

__all__ = ["PreparedContext", "save_prepared", "load_prepared", "delete_prepared"]

log = logging.getLogger(__name__)


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
    kv_key: str | None = None  # the content address of ``kv`` in the store (steerc.steering.keys.kv_key)

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

    def query_steering(self) -> SteerBias | None:
        """The stored bias later tokens apply to the stored keys (None when nothing is steered at query time)."""
        if self.config.steer_at == "prefill" or not self.bias.any():
            return None
        return SteerBias(self.bias if self.bias.shape[-1] == self.kv.length else self.on_stored_keys(self.bias))

    def to_stored(self) -> StoredContext:
        """The entry, without its KV: that is stored once, under ``kv_key``, and the entry names it
        (:func:`save_prepared`). An all-zero bias is stored as its shape."""
        if self.kv_key is None:
            raise ValueError("this prepared context has no kv_key; store it with steerc.steering.prepared.save_prepared")
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


def _worse(a: str, b: str) -> str:
    """The tier a two-part read is reported from: the slower part's (memory only when both were)."""
    return a if a != "memory" else b


def save_prepared(store: ContextStore, prepared: PreparedContext) -> None:
    """Store ``prepared``: its KV once (unless present), the entry marked as one of the KV's
    holders, then the entry. A reader that finds the entry finds its KV (or recomputes both)."""
    if prepared.kv_key is None:
        prepared.kv_key = content_kv_key(prepared.kv)
    prepared.kv = save_kv(store, prepared.kv_key, prepared.kv)  # as a reader will get it back
    store.add_ref(prepared.kv_key, prepared.key)
    store.put(prepared.key, prepared.to_stored())


def load_prepared(store: ContextStore, key: str) -> tuple[PreparedContext | None, str]:
    """The prepared context under ``key`` and its tier, or ``(None, "miss")``: absent, or its KV is
    gone or corrupt (then it is recomputed and written again), or its parts do not fit."""
    entry, tier = store.lookup(key)
    if entry is None:
        return None, "miss"
    kv, kv_name = None, entry.meta.get("kv_key")
    if kv_name is not None:
        kv, kv_tier = load_kv(store, kv_name)
        if kv is None:
            log.warning("stored context %s… names KV %s…, which is missing or was corrupt; recomputing both", key[:12], kv_name[:12])
            return None, "miss"
        tier = _worse(tier, kv_tier)
    try:
        return PreparedContext.from_stored(key, entry, kv), tier
    except (KeyError, ValueError) as exc:
        log.warning("dropping stored context %s…: %s", key[:12], exc)
        store.delete(key)
        return None, "miss"


def delete_prepared(store: ContextStore, key: str) -> bool:
    """Delete the entry under ``key``, and its KV when no other entry holds it; whether the entry was there."""
    entry = store.get(key)
    removed = store.delete(key)
    kv_name = entry.meta.get("kv_key") if entry is not None else None
    if kv_name is not None and store.drop_ref(kv_name, key) == 0:
        store.delete(kv_name)
    return removed
