"""One copy of each KV in the context store.

A prepared context's KV is by far its largest part (``L x 2 x kv_heads x head_dim`` values per
token), and several entries of one context share it: the plain entry (``method none``), every
method that steers at query time (llmsteer, pasta, autopasta, query, qllm), their registrations.
So the KV is stored once, as its own entry, under the hash of what produced it
(:func:`kv_key`: the engine, the instruction-head and context token ids, and the bias of the
prefill when it was steered, ``steer_at`` prefill or both; a compacted context's KV adds the
kept positions). A prepared entry holds the rest (selection, bias, importance, metadata) and
names its KV (``meta["kv_key"]``).

* :func:`save_prepared` writes the KV when the store lacks it, marks the entry as one of its
  holders (``store.add_ref``), then writes the entry. Both parts are checksummed entries.
* :func:`load_prepared` reads the entry, then its KV. A KV that is missing (evicted, deleted) or
  was corrupt (the store drops it) makes the entry a miss: it is recomputed and both parts are
  written again. Entries of the earlier format, with the KV inside, are still read.
* :func:`delete_prepared` deletes an entry and, when it was the KV's last holder, the KV.

The same functions work on every store (memory, disk, tiered, Redis); the memory tier holds the
KV once too, so its byte budget counts it once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from steerc.runtime.kv_cache import KVCache
from steerc.stores import ContextStore, StoredContext, context_key

if TYPE_CHECKING:
    from steerc.steering.contexts import PreparedContext

__all__ = ["kv_key", "compacted_kv_key", "kv_of_tensors", "kv_entry", "kv_from_entry", "load_kv", "save_kv", "load_prepared", "save_prepared", "delete_prepared"]

log = logging.getLogger(__name__)

KIND = "kv"


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()


def kv_key(engine_id: str, head_ids: np.ndarray, context_ids: np.ndarray, prefill_bias: np.ndarray | None = None) -> str:
    """The store key of the KV of ``head + context`` prefilled by ``engine_id``, with
    ``prefill_bias [L, H, Nh + N]`` applied during the prefill (None or all zero: a plain prefill)."""
    steered = prefill_bias is not None and bool(np.any(prefill_bias))
    fields = {"kv": "prefill", "prefill_bias": _digest(np.asarray(prefill_bias, np.float32)) if steered else None}
    return context_key(engine_id, np.asarray(context_ids).tolist(), [int(t) for t in np.asarray(head_ids)], fields)


def compacted_kv_key(full_kv_key: str, positions: np.ndarray) -> str:
    """The key of the KV that keeps ``positions`` of the KV under ``full_kv_key``."""
    return hashlib.sha256(f"steerc-compacted-kv\0{full_kv_key}\0{_digest(np.asarray(positions, np.int64))}".encode()).hexdigest()


def _content_key(kv: KVCache) -> str:
    """A content address from the KV's bytes, for a prepared context built without a ``kv_key``."""
    h = hashlib.sha256(f"steerc-kv-content\0{list(kv.keyless)}".encode())
    for a in kv.flat():
        h.update(_digest(a).encode())
    return h.hexdigest()


def kv_of_tensors(tensors: dict[str, np.ndarray], keyless) -> KVCache:
    """The KV held as ``kv.0``, ``kv.1``, … in ``tensors`` (a KV entry's, or an earlier-format
    prepared entry's, which holds other tensors too), for the layout ``keyless``."""
    count = sum(1 for name in tensors if name.startswith("kv."))
    return KVCache.from_flat([tensors[f"kv.{i}"] for i in range(count)], tuple(int(layer) for layer in keyless))


def kv_entry(kv: KVCache) -> StoredContext:
    tensors = {f"kv.{i}": a for i, a in enumerate(kv.flat())}
    return StoredContext(tensors, {"kind": KIND, "length": kv.length, "keyless": list(kv.keyless)})


def kv_from_entry(key: str, entry: StoredContext) -> KVCache:
    if entry.meta.get("kind") != KIND:
        raise ValueError(f"store entry {key[:12]}… is not a KV (kind {entry.meta.get('kind')!r})")
    kv = kv_of_tensors(entry.tensors, entry.meta.get("keyless", ()))
    if kv.length != entry.meta.get("length"):
        raise ValueError(f"stored KV {key[:12]}… has {kv.length} positions, its record says {entry.meta.get('length')}")
    return kv


def _worse(a: str, b: str) -> str:
    """The tier a two-part read is reported from: the slower part's (memory only when both were)."""
    return a if a != "memory" else b


def load_kv(store: ContextStore | None, key: str) -> tuple[KVCache | None, str]:
    """The KV under ``key`` and its tier, or ``(None, "miss")``; a malformed one is dropped."""
    if store is None:
        return None, "miss"
    entry, tier = store.lookup(key)
    if entry is None:
        return None, "miss"
    try:
        return kv_from_entry(key, entry), tier
    except ValueError as exc:
        log.warning("dropping stored KV %s…: %s", key[:12], exc)
        store.delete(key)
        return None, "miss"


def save_kv(store: ContextStore, key: str, kv: KVCache) -> None:
    """Store ``kv`` under ``key`` unless the store holds it already (content-addressed: same key, same KV)."""
    if key not in store:
        store.put(key, kv_entry(kv))


def save_prepared(store: ContextStore | None, prepared: "PreparedContext") -> None:
    """Store ``prepared``: its KV once (unless present), the entry marked as one of the KV's
    holders, then the entry. A reader that finds the entry finds its KV (or recomputes both)."""
    if store is None:
        return
    if prepared.kv_key is None:
        prepared.kv_key = _content_key(prepared.kv)
    save_kv(store, prepared.kv_key, prepared.kv)
    store.add_ref(prepared.kv_key, prepared.key)
    store.put(prepared.key, prepared.to_stored())


def load_prepared(store: ContextStore | None, key: str) -> tuple["PreparedContext | None", str]:
    """The prepared context under ``key`` and its tier, or ``(None, "miss")``: absent, or its KV is
    gone or corrupt (then it is recomputed and written again), or its parts do not fit."""
    from steerc.steering.contexts import PreparedContext

    if store is None:
        return None, "miss"
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
