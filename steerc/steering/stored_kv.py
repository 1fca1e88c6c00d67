"""One copy of each KV in the context store: the KV entry.

A prepared context's KV is by far its largest part (``L x 2 x kv_heads x head_dim`` values per
token), and several entries of one context share it: the plain entry (``method none``), every
method that steers at query time (llmsteer, pasta, autopasta, query, qllm), their registrations.
So the KV is stored once, as its own entry, under the hash of what produced it
(:func:`~steerc.steering.keys.kv_key`: the engine, the instruction-head and context token ids,
and the bias of the prefill when it was steered, ``steer_at`` prefill or both; a compacted
context's KV adds the kept positions). A prepared entry holds the rest (selection, bias,
importance, metadata) and names its KV (``meta["kv_key"]``); writing, reading and deleting the
two parts together is :mod:`steerc.steering.prepared`'s.

This module is the KV entry itself: :func:`kv_entry` / :func:`kv_from_entry` (the format),
:func:`save_kv` (written once: same key, same KV) and :func:`load_kv` (a malformed one is
dropped). The same functions work on every store (memory, disk, tiered, Redis, null); the
memory tier holds the KV once too, so its byte budget counts it once.
"""

from __future__ import annotations

import logging

from steerc.runtime.kv_cache import KVCache
from steerc.steering.kv_codec import decode, encode
from steerc.stores import ContextStore, StoredContext

__all__ = ["kv_of_tensors", "kv_entry", "kv_from_entry", "load_kv", "save_kv"]

log = logging.getLogger(__name__)

KIND = "kv"


def kv_of_tensors(tensors: dict, keyless) -> KVCache:
    """The KV held as ``kv.0``, ``kv.1``, … in ``tensors`` (a KV entry's, or an earlier-format
    prepared entry's, which holds other tensors too), for the layout ``keyless``."""
    count = sum(1 for name in tensors if name.startswith("kv."))
    return KVCache.from_flat([tensors[f"kv.{i}"] for i in range(count)], tuple(int(layer) for layer in keyless))


def kv_entry(kv: KVCache, scheme: str = "engine") -> StoredContext:
    """The entry of ``kv``, kept at rest as ``scheme`` (:mod:`steerc.steering.kv_codec`)."""
    tensors, codec = encode(list(kv.flat()), scheme)
    return StoredContext(tensors, {"kind": KIND, "length": kv.length, "keyless": list(kv.keyless), "codec": codec})


def kv_from_entry(key: str, entry: StoredContext) -> KVCache:
    """The KV of an entry, in the dtype it was computed in, whatever scheme keeps it."""
    if entry.meta.get("kind") != KIND:
        raise ValueError(f"store entry {key[:12]}… is not a KV (kind {entry.meta.get('kind')!r})")
    try:
        arrays = decode(entry.tensors, entry.meta.get("codec"))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"stored KV {key[:12]}… cannot be decoded: {exc}") from None
    kv = KVCache.from_flat(arrays, tuple(int(layer) for layer in entry.meta.get("keyless", ())))
    if kv.length != entry.meta.get("length"):
        raise ValueError(f"stored KV {key[:12]}… has {kv.length} positions, its record says {entry.meta.get('length')}")
    return kv


def load_kv(store: ContextStore, key: str) -> tuple[KVCache | None, str]:
    """The KV under ``key`` and its tier, or ``(None, "miss")``; a malformed one is dropped."""
    entry, tier = store.lookup(key)
    if entry is None:
        return None, "miss"
    try:
        return kv_from_entry(key, entry), tier
    except ValueError as exc:
        log.warning("dropping stored KV %s…: %s", key[:12], exc)
        store.delete(key)
        return None, "miss"


def save_kv(store: ContextStore, key: str, kv: KVCache) -> KVCache:
    """Store ``kv`` under ``key`` (at the store's ``kv_scheme``) unless the store holds it already
    (content-addressed: same key, same KV). Returns the KV as a reader gets it back (``kv`` itself
    when kept as it is), so the request that prepared it answers as every later one will."""
    scheme = getattr(store, "kv_scheme", "engine")
    if scheme == "engine":
        if key not in store:
            store.put(key, kv_entry(kv))
        return kv
    entry = kv_entry(kv, scheme)  # encoded even when stored already: the caller answers with what a reader gets
    if key not in store:
        store.put(key, entry)
    return kv_from_entry(key, entry)
