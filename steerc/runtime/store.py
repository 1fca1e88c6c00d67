"""The store of prepared (steered) contexts: LLMSteer-style prefix caching.

A :class:`StoredContext` is a set of named numpy arrays (a context's KV cache, say) plus
JSON metadata, filed under :func:`context_key` (a sha256 of engine, context tokens, prefix
and steering config). Entries serialise to safetensors bytes with a checksum; nothing is
ever unpickled. Stores: :class:`MemoryStore` (LRU under a byte budget), :class:`DiskStore`
(one file per entry, atomic writes, corrupt files dropped) and :class:`TieredStore`
(memory in front of a backing store; the backing store is the source of truth) and, in
:mod:`steerc.runtime.redis_store`, ``RedisStore`` (shared by several processes).
:func:`open_store` builds one from a CLI spec. ``store.lock(key)`` serialises the preparation
of one entry, so concurrent requests for the same new context prepare it once.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import operator
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from steerc.errors import SteercError

__all__ = [
    "StoredContext", "StoreStats", "CorruptEntryError", "check_key", "context_key", "entry_to_bytes", "entry_from_bytes",
    "ContextStore", "KeyLocks", "MemoryStore", "DiskStore", "TieredStore", "default_root", "open_store",
]  # fmt: skip

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def check_key(key: str) -> str:
    """``key`` if it is a store key (64 lowercase hex characters, as :func:`context_key` makes); raises otherwise."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"store keys are 64 lowercase hex characters (see context_key), got {key!r}")
    return key


class CorruptEntryError(SteercError):
    """A stored context is truncated, garbled, or filed under the wrong key."""


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


class MemoryStore(ContextStore):
    """LRU of entries under a byte budget (``entry.nbytes``); thread-safe. Entries are not copied."""

    tier = "memory"

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        super().__init__()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[StoredContext, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        return self._used

    def get(self, key: str) -> StoredContext | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return item[0]

    def put(self, key: str, entry: StoredContext) -> None:
        size = entry.nbytes
        with self._lock:
            self._pop(key)
            if size > self.max_bytes:
                if self.max_bytes:  # a zero budget means no memory tier: not worth a warning per entry
                    log.warning("context %s (%d bytes) exceeds the memory store budget of %d bytes; not cached", key, size, self.max_bytes)
                return
            while self._used + size > self.max_bytes:
                self._pop(next(iter(self._entries)))
                self.stats.evictions += 1
            self._entries[key] = (entry, size)
            self._used += size
            self.stats.puts += 1

    def _pop(self, key: str) -> bool:
        item = self._entries.pop(key, None)
        self._used -= item[1] if item else 0
        return item is not None

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._pop(key)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._used = 0


class DiskStore(ContextStore):
    """One safetensors file per entry under ``root/key[:2]/``; atomic writes; corrupt files are dropped."""

    tier = "disk"

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)[:2] / f"{key}.safetensors"

    def get(self, key: str) -> StoredContext | None:
        path = self.path(key)
        try:
            entry = entry_from_bytes(key, path.read_bytes())
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except (CorruptEntryError, OSError) as exc:
            log.warning("dropping unreadable stored context %s: %s", path, exc)
            self.stats.corrupt += 1
            self.stats.misses += 1
            self._unlink(path)
            return None
        self.stats.hits += 1
        return entry

    def put(self, key: str, entry: StoredContext) -> None:
        path = self.path(key)
        data = entry_to_bytes(key, entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.puts += 1

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except OSError:
            return False

    def delete(self, key: str) -> bool:
        return self._unlink(self.path(key))

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def clear(self) -> None:
        """Remove this store's entry files (and stray temporaries); other files are left alone."""
        for pattern in ("[0-9a-f][0-9a-f]/*.safetensors", "[0-9a-f][0-9a-f]/.*.tmp"):
            for path in self.root.glob(pattern):
                self._unlink(path)


class TieredStore(ContextStore):
    """A :class:`MemoryStore` in front of a backing store; backing hits are promoted to memory.

    The backing store is the source of truth: a memory hit is confirmed with ``key in backing``
    (a stat, or one Redis ``EXISTS``), so an entry another process deleted is not served."""

    def __init__(self, memory: MemoryStore, backing: ContextStore) -> None:
        super().__init__()
        self.memory, self.backing = memory, backing
        self.tier = backing.tier

    def lock(self, key: str):
        return self.backing.lock(key)

    def lookup(self, key: str) -> tuple[StoredContext | None, str]:
        """The entry and where it came from: ``"memory"``, the backing store's tier (``"disk"``,
        ``"redis"``) or ``"miss"``."""
        entry, tier = self.memory.get(key), "memory"
        if entry is not None and key not in self.backing:
            self.memory.delete(key)  # deleted (or evicted) behind this process's back
            entry = None
        if entry is None:
            entry, tier = self.backing.get(key), self.backing.tier
            if entry is not None:
                self.memory.put(key, entry)
        if entry is None:
            self.stats.misses += 1
            return None, "miss"
        self.stats.hits += 1
        return entry, tier

    def get(self, key: str) -> StoredContext | None:
        return self.lookup(key)[0]

    def put(self, key: str, entry: StoredContext) -> None:
        self.backing.put(key, entry)
        self.memory.put(key, entry)
        self.stats.puts += 1

    def delete(self, key: str) -> bool:
        in_memory = self.memory.delete(key)
        return self.backing.delete(key) or in_memory

    def __contains__(self, key: str) -> bool:
        return key in self.memory or key in self.backing

    def clear(self) -> None:
        self.memory.clear()
        self.backing.clear()


def default_root() -> Path:
    """``$STEERC_CONTEXT_STORE`` if set, else ``~/.cache/steerc/contexts``."""
    return Path(os.environ.get("STEERC_CONTEXT_STORE") or "~/.cache/steerc/contexts").expanduser()


def open_store(spec: str | None, memory_bytes: int = 1 << 30) -> ContextStore:
    """``None``: memory + disk at :func:`default_root`; ``"memory"``: memory only; a folder path:
    memory + disk there; ``redis://host:port/db``: memory + a Redis server (shared by processes)."""
    if spec is None:
        return TieredStore(MemoryStore(memory_bytes), DiskStore(default_root()))
    if spec == "memory":
        return MemoryStore(memory_bytes)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from steerc.runtime.redis_store import RedisStore

        return TieredStore(MemoryStore(memory_bytes), RedisStore(spec))
    if not spec.strip():
        raise SteercError("the context store spec is empty; pass 'memory', a folder path, or leave it out for the default")
    return TieredStore(MemoryStore(memory_bytes), DiskStore(spec))
