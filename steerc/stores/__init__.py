"""steerc stores: where prepared (steered) contexts are kept, LLMSteer-style prefix caching.

This package owns the context stores: the :class:`ContextStore` interface and the entry
format (:mod:`steerc.stores.base`), :class:`MemoryStore` (LRU under a byte budget),
:class:`DiskStore` (one file per entry, atomic writes, corrupt files dropped),
:class:`TieredStore` (memory in front of a backing store; the backing store is the source of
truth), :class:`NullStore` (keeps nothing: every lookup misses), in :mod:`steerc.stores.redis`
``RedisStore`` (shared by several processes; imported only when asked for) and, in
:mod:`steerc.stores.guarded`, ``GuardedStore`` (the server's view of a store that may fail:
timeouts, backoff, degraded answers). :func:`open_store` builds one from a CLI spec; which
backing store a spec names is the registry's (:mod:`steerc.stores.registry`, by URL scheme).
"""

from __future__ import annotations

import os
from pathlib import Path

from steerc.errors import SteercError
from steerc.stores.base import (
    ContextStore,
    CorruptEntryError,
    KeyLocks,
    StoredContext,
    StoreStats,
    StoreUnavailableError,
    check_key,
    context_key,
    entry_from_bytes,
    entry_to_bytes,
)
from steerc.stores.disk import DiskStore
from steerc.stores.memory import MemoryStore
from steerc.stores.null import NullStore
from steerc.stores.registry import BACKING_STORES, backing_store, scheme_of
from steerc.stores.tiered import TieredStore

__all__ = [
    "StoredContext", "StoreStats", "CorruptEntryError", "StoreUnavailableError", "check_key", "context_key", "entry_to_bytes", "entry_from_bytes",
    "ContextStore", "KeyLocks", "MemoryStore", "NullStore", "DiskStore", "TieredStore", "BACKING_STORES", "KV_SCHEMES", "check_kv_scheme", "default_root", "open_store",
]  # fmt: skip


KV_SCHEMES = ("engine", "fp16", "int8")  # steerc.steering.kv_codec implements them; the store only records the choice


def check_kv_scheme(scheme: str) -> str:
    """``scheme`` if it is one of :data:`KV_SCHEMES`; ValueError otherwise."""
    if scheme not in KV_SCHEMES:
        raise ValueError(f"the stored KV dtype must be one of {', '.join(KV_SCHEMES)}, got {scheme!r}")
    return scheme


def default_root() -> Path:
    """``$STEERC_CONTEXT_STORE`` if set, else ``~/.cache/steerc/contexts``."""
    return Path(os.environ.get("STEERC_CONTEXT_STORE") or "~/.cache/steerc/contexts").expanduser()


def open_store(spec: str | None, memory_bytes: int = 1 << 30, timeout: float = 60.0, disk_bytes: int | None = None, kv_scheme: str = "engine") -> ContextStore:
    """``None``: memory + disk at :func:`default_root`; ``"memory"``: memory only; otherwise memory
    in front of the backing store the spec names (:mod:`steerc.stores.registry`: a folder path or
    ``file://``, ``redis://host:port/db`` shared by processes, ...), each of its commands failing
    after ``timeout`` seconds. ``disk_bytes``: the budget of a disk store (None: unbounded; a
    Redis store is bounded by Redis's own ``maxmemory``). ``kv_scheme``: how KVs are kept at rest,
    one of :data:`KV_SCHEMES` (``engine``: as computed; ``fp16``; ``int8`` with per-vector scales)."""
    try:
        check_kv_scheme(kv_scheme)
    except ValueError as exc:
        raise SteercError(str(exc)) from None
    store = _open_store(spec, memory_bytes, timeout, disk_bytes)
    store.kv_scheme = kv_scheme
    return store


def _open_store(spec: str | None, memory_bytes: int, timeout: float, disk_bytes: int | None) -> ContextStore:
    if spec is None:
        return TieredStore(MemoryStore(memory_bytes), DiskStore(default_root(), disk_bytes))
    if not spec.strip():
        raise SteercError("the context store spec is empty; pass 'memory', a folder path, or leave it out for the default")
    if spec == "memory":
        return MemoryStore(memory_bytes)
    if disk_bytes is not None and scheme_of(spec) != "file":
        raise SteercError(f"a disk budget applies to a folder store, not {spec!r}; bound Redis with its maxmemory setting (see the README)")
    backing = backing_store(spec, timeout)
    if disk_bytes is not None:
        backing = DiskStore(backing.root, disk_bytes)  # the folder the spec names, with its budget
    return TieredStore(MemoryStore(memory_bytes), backing)
