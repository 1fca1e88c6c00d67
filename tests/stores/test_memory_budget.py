"""The memory store under its byte budget follows the disk store's rule: LRU, but a pinned entry
and an entry held by an entry still there (a KV and its prepared entry, a document KV and its
record) are never evicted; as a tiered store's memory tier it stays plain LRU."""

import hashlib
import time

import numpy as np

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
