"""The memory store under its byte budget follows the disk store's rule: LRU, but a pinned entry
and an entry held by an entry still there (a KV and its prepared entry, a document KV and its
record) are never evicted; as a tiered store's memory tier it stays plain LRU."""

import hashlib
import time

import numpy as np
import pytest

from steerc.stores import DiskStore, MemoryStore, StoredContext, TieredStore


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def entry(n: int = 100, kind: str = "prepared") -> StoredContext:
    return StoredContext({"x": np.zeros(n, np.uint8)}, {"kind": kind})


SIZE = entry().nbytes


def test_pinned_entries_are_never_evicted_and_a_pin_with_a_time_ends_then(caplog):
    store = MemoryStore(3 * SIZE)
    store.put(key("forever"), entry())
    store.pin(key("forever"))
    store.put(key("ttl"), entry())
    store.pin(key("ttl"), until=time.time() + 3600)
    for i in range(5):
        store.put(key(f"e{i}"), entry())
    assert key("forever") in store and key("ttl") in store and key("e4") in store and key("e3") not in store
    store.put(key("big"), entry(2 * SIZE))  # nothing evictable frees 2 slots beside two pins: dropped, the budget holds
    assert key("big") not in store and store.bytes_used <= store.max_bytes and "pinned or referenced" in caplog.text
    store.pin(key("ttl"), until=time.time() - 1)  # ended
    store.put(key("e5"), entry())
    store.put(key("e6"), entry())
    assert key("ttl") not in store and key("forever") in store
    store.unpin(key("forever"))
    for i in range(7, 10):
        store.put(key(f"e{i}"), entry())
    assert key("forever") not in store


def test_a_kv_stays_while_an_entry_holds_it_and_goes_after_it():
    store = MemoryStore(4 * SIZE)
    store.put(key("kv"), entry(kind="kv"))  # the oldest: evicted first if holding did not count
    store.add_ref(key("kv"), key("holder"))
    store.put(key("holder"), entry())
    store.put(key("e0"), entry())
    store.put(key("e1"), entry())  # full now
    store.put(key("e2"), entry())  # the holder goes (its mark with it), though the KV is older
    assert key("holder") not in store and key("kv") in store
    assert store.drop_ref(key("kv"), key("holder")) == 0  # the evicted holder's mark went with it
    store.put(key("e3"), entry())  # then the KV nobody holds
    assert key("kv") not in store and store.bytes_used <= store.max_bytes


def test_a_mark_whose_holder_is_not_there_holds_nothing():
    store = MemoryStore(2 * SIZE)
    store.put(key("kv"), entry(kind="kv"))
    store.add_ref(key("kv"), key("never-written"))  # e.g. a holder whose own write did not fit
    store.put(key("e0"), entry())
    store.put(key("e1"), entry())
    assert key("kv") not in store


def test_the_entry_being_written_holds_its_kv_while_it_makes_room():
    store = MemoryStore(2 * SIZE)
    store.put(key("kv"), entry(kind="kv"))
    store.put(key("other"), entry())
    store.get(key("other"))  # the KV is the least recently used now
    store.add_ref(key("kv"), key("holder"))  # as save_prepared does: mark, then write the holder
    store.put(key("holder"), entry())
    assert key("kv") in store and key("holder") in store and key("other") not in store


def test_the_memory_tier_of_a_tiered_store_stays_plain_lru(tmp_path):
    store = TieredStore(MemoryStore(2 * SIZE), DiskStore(tmp_path))
    store.put(key("kv"), entry(kind="kv"))
    store.add_ref(key("kv"), key("holder"))  # the marks and pins are the backing store's
    store.put(key("holder"), entry())
    store.pin(key("holder"))
    store.put(key("e0"), entry())
    store.put(key("e1"), entry())
    assert store.memory.get(key("kv")) is None and store.memory.get(key("holder")) is None
    assert store.lookup(key("kv"))[1] == "disk" and store.lookup(key("holder"))[1] == "disk"


class _OldRule(MemoryStore):
    """The eviction rule as first written (one LRU rescan per victim, one walk of every mark per
    victim): the specification the faster ``MemoryStore._make_room`` must match victim by victim."""

    def _make_room(self, need: int, writing: str) -> bool:
        if self._used + need <= self.max_bytes:
            return True
        now = time.time()
        pinned = {k for k, until in self._pins.items() if until is None or until > now}

        def kept(k: str) -> bool:
            return k in pinned or any(h == writing or h in self._entries for h in self._refs.get(k, ()))

        while self._used + need > self.max_bytes:
            victim = next((k for k in self._entries if not kept(k)), None)
            if victim is None:
                return False
            self._pop(victim)
            self.stats.evictions += 1
            for target in [t for t, holders in self._refs.items() if victim in holders]:
                self._refs[target].discard(victim)
                if not self._refs[target]:
                    del self._refs[target]
        return True


def _recording(cls):
    """``cls`` noting, in order, the entries its ``_make_room`` evicts (each goes through ``_pop``)."""

    class Recording(cls):
        def __init__(self, max_bytes):
            super().__init__(max_bytes)
            self.victims, self._evicting = [], False

        def _make_room(self, need, writing):
            self._evicting = True
            try:
                return super()._make_room(need, writing)
            finally:
                self._evicting = False

        def _pop(self, key):
            if self._evicting:
                self.victims.append(key)
            return super()._pop(key)

    return Recording


def _state(store):
    return list(store._entries), store.bytes_used, vars(store.stats), {t: set(h) for t, h in store._refs.items()}


def _check_marks_mirror_refs(store):
    pairs = {(t, h) for t, holders in store._refs.items() for h in holders}
    assert pairs == {(t, h) for h, targets in store._marks.items() for t in targets}
    assert all(store._refs.values()) and all(store._marks.values())  # no empty sets left behind


def _run_both(ops, max_bytes, caplog):
    """Apply ``ops`` to the store and to the old rule; after each, the same victims in the same order,
    the same entries in the same LRU order, bytes, stats, marks, drop_ref answers and warnings."""
    new, old = _recording(MemoryStore)(max_bytes), _recording(_OldRule)(max_bytes)
    for step, (name, *args) in enumerate(ops):
        out = {}
        for label, store in (("old", old), ("new", new)):
            caplog.clear()
            store.victims.clear()
            result = getattr(store, name)(*args)
            out[label] = (result, list(store.victims), [r.getMessage() for r in caplog.records], _state(store))
        assert out["new"] == out["old"], (step, name, out)
        _check_marks_mirror_refs(new)
    return new


def _random_ops(seed: int, n: int = 300, pool: int = 12):
    """Puts of 1 to 3 slots (some marking first, as save_prepared does: mark, then write the holder),
    gets, pins (until unpinned, until later, already ended), marks (mostly an entry marking a KV;
    now and then any two entries: chains, cycles, an entry marking itself, a holder never written),
    and unpins, drop_refs and deletes mostly of what is there, so that the budget keeps filling,
    emptying and refusing (over 24 seeds: about 1,700 evicting writes, 300 with several victims,
    over 100 entries freed by their last holder's eviction, 600 refusals)."""
    rng = np.random.default_rng(seed)
    keys = [key(f"k{i}") for i in range(pool)]
    pick = lambda: keys[int(rng.integers(pool))]  # noqa: E731
    size = lambda: entry(int(rng.integers(1, 4)) * 100)  # noqa: E731
    kv, holding = keys[: pool // 3], keys[pool // 3 :]
    mark = lambda: (kv[int(rng.integers(len(kv)))], holding[int(rng.integers(len(holding)))]) if rng.random() < 0.8 else (pick(), pick())  # noqa: E731
    marks, pins, ops = [], [], []
    for _ in range(n):
        r = rng.random()
        if r < 0.28:
            ops.append(("put", pick(), size()))
        elif r < 0.48:
            target, holder = mark()
            marks.append((target, holder))
            ops += [("add_ref", target, holder), ("put", holder, size())]
        elif r < 0.58:
            ops.append(("get", pick()))
        elif r < 0.62:
            pins.append(pick())
            ops.append(("pin", pins[-1], [None, time.time() + 3600, time.time() - 3600][int(rng.integers(3))]))
        elif r < 0.68:
            ops.append(("unpin", pins.pop(int(rng.integers(len(pins)))) if pins and rng.random() < 0.8 else pick()))
        elif r < 0.74:
            target, holder = mark()
            marks.append((target, holder))
            ops.append(("add_ref", target, holder))
        elif r < 0.88:
            ops.append(("drop_ref", *(marks.pop(int(rng.integers(len(marks)))) if marks and rng.random() < 0.8 else (pick(), pick()))))
        else:
            ops.append(("delete", pick()))
    return ops


@pytest.mark.parametrize("seed", range(24))
def test_eviction_matches_the_old_rule_on_random_sequences(seed, caplog):
    budget = (3 + seed % 5) * SIZE  # 3 to 7 small entries; entries take 1 to 3 hundred bytes
    _run_both(_random_ops(seed), budget, caplog)


def test_an_entry_whose_last_holder_goes_is_evicted_in_the_same_write_in_lru_order(caplog):
    """LRU order kv, pinned, holder, x, y: a write needing three slots evicts the holder (the oldest
    entry not kept), then the KV it held (now the oldest not kept, older than x), then x. A chain
    (a held by b held by c) goes from its end in the same write, before a newer entry."""
    kv, pinned, holder, x, y = (key(n) for n in ("kv", "pinned", "holder", "x", "y"))
    ops = [("put", k, entry()) for k in (kv, pinned, holder, x, y)]
    ops += [("pin", pinned, None), ("add_ref", kv, holder), ("put", key("big"), entry(2 * SIZE + 100))]  # 3 * SIZE bytes
    store = _run_both(ops, 5 * SIZE, caplog)
    assert store.victims == [holder, kv, x] and list(store._entries) == [pinned, y, key("big")]

    kv1, kv2 = key("kv1"), key("kv2")  # one victim freeing two: they go oldest first
    ops = [("put", k, entry()) for k in (kv1, kv2, pinned, holder, x)]
    ops += [("pin", pinned, None), ("add_ref", kv2, holder), ("add_ref", kv1, holder), ("put", key("big"), entry(2 * SIZE + 100))]
    store = _run_both(ops, 5 * SIZE, caplog)
    assert store.victims == [holder, kv1, kv2] and list(store._entries) == [pinned, x, key("big")]

    a, b, c, d = (key(n) for n in "abcd")
    ops = [("put", k, entry()) for k in (a, b, c, d)] + [("add_ref", a, b), ("add_ref", b, c), ("put", key("new"), entry(2 * SIZE + 100))]
    store = _run_both(ops, 4 * SIZE, caplog)
    assert store.victims == [c, b, a] and list(store._entries) == [d, key("new")]


def test_eviction_passes_a_long_pinned_head_once_per_write():
    """5,000 entries, the 2,000 oldest pinned, 1,000 KVs held by newer entries: one write that evicts
    half the rest, then writes of one slot each; the old rule rescanned the pinned head (and walked
    every mark) per victim."""
    n, pinned = 5000, 2000
    store = _recording(MemoryStore)(n * SIZE)
    keys = [key(f"s{i}") for i in range(n)]
    for k in keys:
        store.put(k, entry())
    for k in keys[:pinned]:
        store.pin(k)
    for i in range(1000):  # KVs 2000..2999 held by 4000..4999, so each goes right after its holder
        store.add_ref(keys[pinned + i], keys[4000 + i])
    store.put(key("big"), entry(1500 * SIZE))
    assert len(store.victims) >= 1500 and all(k in store for k in keys[:pinned])
    for i in range(200):
        store.put(key(f"more{i}"), entry())
    assert store.bytes_used <= store.max_bytes and all(k in store for k in keys[:pinned])
    _check_marks_mirror_refs(store)
