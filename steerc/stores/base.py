"""The context-store interface and what every store shares.

A :class:`StoredContext` is a set of named numpy arrays (a context's KV cache, say) plus
JSON metadata, filed under :func:`context_key` (a sha256 of engine, context tokens, prefix
and steering config). Entries serialise to safetensors bytes with a checksum
(:func:`entry_to_bytes`, :func:`entry_from_bytes`); nothing is ever unpickled.
:class:`ContextStore` is the interface the stores implement; ``store.lock(key)`` serialises
the preparation of one entry, so concurrent requests for the same new context prepare it once.

An entry may use another entry (a prepared context uses the one copy of its KV, filed under the
KV's own content address): ``add_ref(target, holder)`` records that, ``drop_ref`` forgets it
and says how many holders are left, so whoever deletes the last holder deletes the target too.
Reference marks are bookkeeping for deletion only; a reader never trusts them: an entry whose
target is gone (evicted, deleted by a racing process) is a miss and is recomputed.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import operator
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from steerc.errors import SteercError

__all__ = [
    "StoredContext", "StoreStats", "CorruptEntryError", "StoreUnavailableError", "check_key", "context_key", "entry_to_bytes", "entry_from_bytes",
    "ContextStore", "KeyLocks",
]  # fmt: skip

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def check_key(key: str) -> str:
    """``key`` if it is a store key (64 lowercase hex characters, as :func:`context_key` makes); raises otherwise."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"store keys are 64 lowercase hex characters (see context_key), got {key!r}")
    return key


class CorruptEntryError(SteercError):
    """A stored context is truncated, garbled, or filed under the wrong key."""


class StoreUnavailableError(SteercError):
    """The context store cannot be read or written (server down, timeout, disk full, permission denied)."""


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass
class StoredContext:
    """A prepared context: named numpy arrays plus JSON-able metadata."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values()) + len(_json(self.meta).encode())


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evictions: int = 0
    puts: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def context_key(engine_id: str, context_ids: Sequence[int], prefix: str | Sequence[int], config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of everything that determines a prepared context."""
    for name, value in config.items():
        try:
            if not isinstance(name, str):
                raise TypeError("keys must be strings")
            _json(value)
        except (TypeError, ValueError) as exc:
            hint = "use str/int/float/bool/None, lists and dicts"
            raise ValueError(f"config key {name!r} is not JSON-serialisable ({exc}); {hint}") from None
    prefix_value = prefix if isinstance(prefix, str) else [operator.index(t) for t in prefix]
    context = [operator.index(t) for t in context_ids]
    doc = {"engine": str(engine_id), "context": context, "prefix": prefix_value, "config": dict(config), "v": 1}
    return hashlib.sha256(_json(doc).encode()).hexdigest()


def _checksum(tensors: Mapping[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{arr.dtype}\0{list(arr.shape)}\0".encode())
        h.update(arr.data)
    h.update(meta_json.encode())
    return h.hexdigest()


def entry_to_bytes(key: str, entry: StoredContext) -> bytes:
    """Serialise an entry to safetensors bytes carrying its key, metadata and checksum."""
    from safetensors.numpy import save

    tensors = {n: np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for n, a in entry.tensors.items()}
    meta_json = _json(entry.meta)
    header = {"steerc_context": "1", "key": key, "meta": meta_json, "checksum": _checksum(tensors, meta_json)}
    return save(tensors, metadata=header)


def entry_from_bytes(key: str, data: bytes) -> StoredContext:
    """Parse and verify :func:`entry_to_bytes` output; raises :class:`CorruptEntryError`."""
    from safetensors.numpy import load

    def corrupt(what: str) -> CorruptEntryError:
        return CorruptEntryError(f"stored context {key} is corrupt ({what}); delete it so it is recomputed")

    try:
        tensors = load(bytes(data))
        size = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8 : 8 + size])).get("__metadata__") or {}
    except Exception as exc:  # safetensors/json raise several kinds on truncated or garbled data
        raise corrupt(f"unreadable: {type(exc).__name__}: {exc}") from None
    if header.get("steerc_context") != "1":
        raise corrupt("not a steerc context entry")
    if header.get("key") != key:
        raise corrupt(f"filed under key {header.get('key')!r}")
    meta_json = header.get("meta", "")
    if header.get("checksum") != _checksum(tensors, meta_json):
        raise corrupt("checksum mismatch")
    return StoredContext(tensors, json.loads(meta_json))


class KeyLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class ContextStore(abc.ABC):
    """get/put/delete prepared contexts by key; ``stats`` counts what happened. ``tier`` names
    where a hit came from (``memory``, ``disk``, ``redis``)."""

    tier = "store"
    kv_scheme = "engine"  # how KV entries are kept at rest: "engine" (as computed), "fp16", "int8" (steerc.steering.kv_codec)

    def __init__(self) -> None:
        self.stats = StoreStats()
        self._key_locks = KeyLocks()

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key`` while preparing its entry: whoever waits looks the entry up again after.
        This one is per process; a store shared across processes also locks across them."""
        with self._key_locks.hold(key):
            yield

    def lookup(self, key: str) -> tuple[StoredContext | None, str]:
        """The entry and where it came from: this store's ``tier``, or ``(None, "miss")``."""
        entry = self.get(key)
        return entry, (self.tier if entry is not None else "miss")

    @classmethod
    def from_spec(cls, spec: str, timeout: float) -> "ContextStore":
        """The store a spec of this store's scheme names (:mod:`steerc.stores.registry`), each
        command failing after ``timeout`` seconds where the store can wait."""
        raise NotImplementedError(f"{cls.__name__} is not opened from a store spec")

    def ping(self) -> None:
        """Check that the store answers (cheaply); raises :class:`StoreUnavailableError` if not."""

    def pin(self, key: str, until: float | None = None) -> None:
        """Never evict ``key`` until :meth:`unpin` or the Unix time ``until`` (stores without a
        budget keep everything anyway)."""

    def unpin(self, key: str) -> None:
        """Let ``key`` be evicted again."""

    def collect_garbage(self, shared_kinds: tuple[str, ...] = ("kv",), grace_s: float = 600.0) -> dict[str, int]:
        """Remove what killed writers left behind (see :meth:`steerc.stores.DiskStore.collect_garbage`);
        the counts removed by kind. Stores that leave nothing behind remove nothing."""
        return {}

    # -- indexes: named sets of keys (the contexts a tenant registered, say) ---------------------
    def index_add(self, index: str, member: str) -> None:
        """Add the key ``member`` to the set named by the key ``index``, shared like the store's
        entries. Members are bookkeeping for listing only: a reader checks that what a member
        names still exists, and drops it (:meth:`index_drop`) when it does not."""
        raise NotImplementedError(f"{type(self).__name__} keeps no indexes, so it cannot list what it holds")

    def index_drop(self, index: str, member: str) -> None:
        """Remove ``member`` from the set ``index`` (absent: nothing to do)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no indexes, so it cannot list what it holds")

    def index_members(self, index: str) -> set[str]:
        """The keys in the set ``index`` (empty when there is none)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no indexes, so it cannot list what it holds")

    @abc.abstractmethod
    def add_ref(self, target: str, holder: str) -> None:
        """Record that entry ``holder`` uses entry ``target`` (where the entries are: a store
        shared across processes shares its marks)."""

    @abc.abstractmethod
    def drop_ref(self, target: str, holder: str) -> int:
        """Forget that ``holder`` uses ``target``; how many holders ``target`` has left."""

    @abc.abstractmethod
    def get(self, key: str) -> StoredContext | None: ...

    @abc.abstractmethod
    def put(self, key: str, entry: StoredContext) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool: ...

    @abc.abstractmethod
    def __contains__(self, key: str) -> bool: ...

    @abc.abstractmethod
    def clear(self) -> None: ...
