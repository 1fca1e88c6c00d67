"""``MemoryStore``: prepared contexts in this process's memory, LRU under a byte budget.

Eviction follows the disk store's rule (:mod:`steerc.stores.disk`): an entry that is pinned
(``pin``: a registration record, a context registered with ``pin``) or held by an entry still
here (``add_ref``: a KV its prepared entry uses, a document KV its record uses) is never
evicted; evicting a holder drops its marks, so what it held can go after it. A write that
cannot fit beside what is kept is dropped with a warning (a miss later). As the memory tier of
a :class:`~steerc.stores.tiered.TieredStore` it gets no pins or marks (those go to the backing
store) and is plain LRU.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict

from steerc.stores.base import ContextStore, StoredContext, check_key

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)


class MemoryStore(ContextStore):
    """LRU of entries under a byte budget (``entry.nbytes``), pinned and held entries kept (see
    the module doc); thread-safe. Entries are not copied."""

    tier = "memory"

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        super().__init__()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[StoredContext, int]] = OrderedDict()
        self._refs: dict[str, set[str]] = {}  # target -> holders (add_ref)
        self._marks: dict[str, set[str]] = {}  # holder -> targets: the same marks, the other way round
        self._indexes: dict[str, set[str]] = {}  # index -> members (index_add)
        self._pins: dict[str, float | None] = {}  # key -> until (pin; None: until unpin)
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
            if not self._make_room(size, key):
                log.warning("the memory context store holds %d bytes of pinned or referenced entries; a %d-byte write would pass its budget of %d bytes "
                            "and is dropped (raise --memory-store-mb, unpin contexts or delete documents)", self._used, size, self.max_bytes)
                return
            self._entries[key] = (entry, size)
            self._used += size
            self.stats.puts += 1

    def _make_room(self, need: int, writing: str) -> bool:
        """Evict least-recently-used entries, never a pinned one nor one held by an entry here (or by
        ``writing``, the entry being written), until ``need`` more bytes fit; False when they cannot
        (what was evicted by then stays evicted).

        Each victim is the least recently used entry not kept at that moment. Within one call an
        entry can only go from kept to not kept (pins are read once, entries and marks only go), and
        only when an evicted victim was its last holder here; so one pass over the LRU order finds
        the victims, counting each kept entry's holders here once and, as victims go, the holders
        left of just the entries they marked; an entry passed over whose count reaches zero is the
        next victim (before the pass goes on, in LRU order among such). Linear in the entries passed
        and the marks involved."""
        if self._used + need <= self.max_bytes:
            return True
        now = time.time()
        pinned = {k for k, until in self._pins.items() if until is None or until > now}
        used = self._used
        victims: list[str] = []
        gone: set[str] = set()  # the victims, popped once the pass is done (the pass reads the entries)
        holders_here: dict[str, int] = {}  # an entry passed over, kept by marks -> its holders still here
        position: dict[str, int] = {}  # an entry passed over -> its place in the LRU order
        freed: list[tuple[int, str]] = []  # heap: entries passed over that nobody holds any more
        scan = iter(enumerate(self._entries))
        while used + need > self.max_bytes:
            if freed:  # all of them are older than any entry the pass has not reached
                victim = heapq.heappop(freed)[1]
            else:
                victim = None
                for i, k in scan:
                    if k in pinned:
                        continue
                    held = sum(1 for h in self._refs.get(k, ()) if h == writing or (h in self._entries and h not in gone))
                    if not held:
                        victim = k
                        break
                    holders_here[k], position[k] = held, i
                if victim is None:
                    break
            victims.append(victim)
            gone.add(victim)
            used -= self._entries[victim][1]
            for target in self._marks.pop(victim, ()):  # its marks go with it
                holders = self._refs[target]
                holders.discard(victim)
                if not holders:
                    del self._refs[target]
                if target in holders_here:  # passed over while the victim held it
                    holders_here[target] -= 1
                    if not holders_here[target]:
                        del holders_here[target]
                        heapq.heappush(freed, (position[target], target))
        for victim in victims:
            self._pop(victim)
            self.stats.evictions += 1
        return used + need <= self.max_bytes

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
            self._marks.setdefault(holder, set()).add(target)

    def drop_ref(self, target: str, holder: str) -> int:
        check_key(target), check_key(holder)
        with self._lock:
            holders = self._refs.get(target, set())
            holders.discard(holder)
            if not holders:
                self._refs.pop(target, None)
            targets = self._marks.get(holder, set())
            targets.discard(target)
            if not targets:
                self._marks.pop(holder, None)
            return len(holders)

    def pin(self, key: str, until: float | None = None) -> None:
        """Never evict ``key`` until :meth:`unpin`, or until the Unix time ``until``."""
        with self._lock:
            self._pins[check_key(key)] = None if until is None else float(until)

    def unpin(self, key: str) -> None:
        with self._lock:
            self._pins.pop(key, None)

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
            self._marks.clear()
            self._indexes.clear()
            self._pins.clear()
            self._used = 0
