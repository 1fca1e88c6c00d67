"""``MemoryStore``: prepared contexts in this process's memory, LRU under a byte budget."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from steerc.stores.base import ContextStore, StoredContext, check_key

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)


class MemoryStore(ContextStore):
    """LRU of entries under a byte budget (``entry.nbytes``); thread-safe. Entries are not copied."""

    tier = "memory"

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        super().__init__()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[StoredContext, int]] = OrderedDict()
        self._refs: dict[str, set[str]] = {}  # target -> holders (add_ref)
        self._indexes: dict[str, set[str]] = {}  # index -> members (index_add)
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

    def add_ref(self, target: str, holder: str) -> None:
        check_key(target), check_key(holder)
        with self._lock:
            self._refs.setdefault(target, set()).add(holder)

    def drop_ref(self, target: str, holder: str) -> int:
        check_key(target), check_key(holder)
        with self._lock:
            holders = self._refs.get(target, set())
            holders.discard(holder)
            if not holders:
                self._refs.pop(target, None)
            return len(holders)

    def index_add(self, index: str, member: str) -> None:
        check_key(index), check_key(member)
        with self._lock:
            self._indexes.setdefault(index, set()).add(member)

    def index_drop(self, index: str, member: str) -> None:
        with self._lock:
            members = self._indexes.get(check_key(index), set())
            members.discard(member)
            if not members:
                self._indexes.pop(index, None)

    def index_members(self, index: str) -> set[str]:
        with self._lock:
            return set(self._indexes.get(check_key(index), ()))

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._refs.clear()
            self._indexes.clear()
            self._used = 0
