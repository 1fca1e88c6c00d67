"""``TieredStore``: a :class:`~steerc.stores.memory.MemoryStore` in front of a backing store."""

from __future__ import annotations

from steerc.stores.base import ContextStore, StoredContext
from steerc.stores.memory import MemoryStore

__all__ = ["TieredStore"]


class TieredStore(ContextStore):
    """A :class:`MemoryStore` in front of a backing store; backing hits are promoted to memory.

    The backing store is the source of truth: a memory hit is confirmed with ``key in backing``
    (a stat, or one Redis ``EXISTS``), so an entry another process deleted is not served."""

    def __init__(self, memory: MemoryStore, backing: ContextStore) -> None:
        super().__init__()
        self.memory, self.backing = memory, backing
        self.tier = backing.tier

    def ping(self) -> None:
        self.backing.ping()

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
        return key in self.backing  # the source of truth (a memory copy of a deleted entry is stale)

    def add_ref(self, target: str, holder: str) -> None:
        self.backing.add_ref(target, holder)

    def drop_ref(self, target: str, holder: str) -> int:
        return self.backing.drop_ref(target, holder)

    def index_add(self, index: str, member: str) -> None:
        self.backing.index_add(index, member)

    def index_drop(self, index: str, member: str) -> None:
        self.backing.index_drop(index, member)

    def index_members(self, index: str) -> set[str]:
        return self.backing.index_members(index)

    def pin(self, key: str, until: float | None = None) -> None:
        self.backing.pin(key, until)

    def unpin(self, key: str) -> None:
        self.backing.unpin(key)

    def collect_garbage(self, shared_kinds: tuple[str, ...] = ("kv",), grace_s: float = 600.0) -> dict[str, int]:
        return self.backing.collect_garbage(shared_kinds, grace_s)

    def clear(self) -> None:
        self.memory.clear()
        self.backing.clear()
