"""The disk store under a byte budget: LRU by read, pins, the entry/KV split, garbage collection."""

import hashlib
import os
import time

import numpy as np
import pytest

from steerc.errors import SteercError
from steerc.stores import DiskStore, StoredContext, open_store


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def entry(n: int = 1000, kind: str = "prepared") -> StoredContext:
    return StoredContext({"x": np.arange(n, dtype=np.float32)}, {"kind": kind})


SIZE = len(__import__("steerc.stores.base", fromlist=["entry_to_bytes"]).entry_to_bytes(key("a"), entry()))


def age(store: DiskStore, name: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(store.path(key(name)), (t, t))


def test_the_least_recently_read_entry_goes_first_and_the_budget_holds(tmp_path):
    store = DiskStore(tmp_path, max_bytes=3 * SIZE + 10)
    for i, name in enumerate("abc"):
        store.put(key(name), entry())
        age(store, name, 100 - i)  # written a, then b, then c
    assert store.get(key("a")) is not None  # a read now: the most recently used
    store.put(key("d"), entry())
    assert key("b") not in store and all(key(n) in store for n in "acd")
    assert store.stats.evictions == 1 and store.bytes_used <= store.max_bytes


def test_a_stream_of_new_entries_never_passes_the_budget(tmp_path):
    store = DiskStore(tmp_path, max_bytes=5 * SIZE)
    for i in range(30):
        store.put(key(f"e{i}"), entry())
        assert store.bytes_used <= store.max_bytes
    assert store.stats.evictions == 25
    assert store.get(key("e29")) is not None and store.get(key("e0")) is None  # evicted: a miss, not an error


def test_pinned_entries_are_never_evicted(tmp_path):
    store = DiskStore(tmp_path, max_bytes=3 * SIZE + 10)
    store.put(key("pinned"), entry())
    store.pin(key("pinned"))
    age(store, "pinned", 1000)  # the oldest
    for i in range(10):
        store.put(key(f"e{i}"), entry())
    assert key("pinned") in store
    store.unpin(key("pinned"))
    for i in range(10, 13):
        store.put(key(f"e{i}"), entry())
    assert key("pinned") not in store


def test_a_kv_stays_while_an_entry_holds_it_and_goes_after_it(tmp_path):
    store = DiskStore(tmp_path, max_bytes=4 * SIZE + 10)
    store.put(key("kv"), entry(kind="kv"))
    store.add_ref(key("kv"), key("holder"))
    store.put(key("holder"), entry())
    age(store, "kv", 1000)  # older than everything: evicted first if holding did not count
    age(store, "holder", 900)
    for i in range(2):
        store.put(key(f"e{i}"), entry())  # the budget is full now
    store.put(key("e2"), entry())  # the holder goes first (its mark with it), though the KV is older
    assert key("holder") not in store and key("kv") in store
    assert not list((tmp_path / "refs").glob("*/*/*"))
    store.put(key("e3"), entry())  # then the KV nobody holds
    assert key("kv") not in store
    assert store.bytes_used <= store.max_bytes


def test_an_entry_over_the_whole_budget_is_not_stored(tmp_path, caplog):
    store = DiskStore(tmp_path, max_bytes=SIZE // 2)
    store.put(key("big"), entry())
    assert key("big") not in store and "exceeds the disk store budget" in caplog.text


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_budgets_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="positive number of bytes"):
        DiskStore(tmp_path, max_bytes=bad)


def test_a_budget_on_a_redis_store_is_refused():
    with pytest.raises(SteercError, match="maxmemory"):
        open_store("redis://127.0.0.1:1/0", 1 << 20, 1.0, disk_bytes=1 << 30)


def test_garbage_collection_removes_what_a_killed_writer_left_and_nothing_live(tmp_path):
    store = DiskStore(tmp_path)
    store.put(key("orphan"), entry(kind="kv"))  # a KV whose holder was never written (killed between)
    store.put(key("held"), entry(kind="kv"))
    store.add_ref(key("held"), key("live"))
    store.put(key("live"), entry())
    store.put(key("plain"), entry())  # not a shared kind: only DELETE or eviction removes it
    store.put(key("young"), entry(kind="kv"))  # written just now: maybe its holder is being written
    store.add_ref(key("held"), key("gone"))  # a mark whose holder never came
    tmp = store.path(key("x")).parent / f".{key('x')}.123.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b"half")
    old = time.time() - 3600
    for name in ("orphan", "held", "live", "plain"):
        os.utime(store.path(key(name)), (old, old))
    os.utime(tmp, (old, old))
    mark = tmp_path / "refs" / key("held")[:2] / key("held") / key("gone")
    os.utime(mark, (old, old))
    removed = store.collect_garbage(("kv",), grace_s=600)
    assert removed == {"temp_files": 1, "stale_marks": 1, "orphans": 1, "expired_pins": 0}
    assert key("orphan") not in store and not tmp.exists() and not mark.exists()
    assert all(key(n) in store for n in ("held", "live", "plain", "young"))
    assert store.collect_garbage(("kv",), grace_s=600) == {"temp_files": 0, "stale_marks": 0, "orphans": 0, "expired_pins": 0}  # idempotent


def test_a_pin_with_a_time_ends_then(tmp_path):
    store = DiskStore(tmp_path, max_bytes=2 * SIZE + 10)
    store.put(key("ttl"), entry())
    store.pin(key("ttl"), until=time.time() + 3600)
    store.put(key("forever"), entry())
    store.pin(key("forever"))
    store.put(key("e0"), entry())  # nothing evictable: both pinned, so the write is dropped (the budget holds)
    assert key("ttl") in store and key("forever") in store and key("e0") not in store
    assert store.pinned(now=time.time() + 7200) == {key("forever")}  # the first pin ends in an hour
    store.pin(key("ttl"), until=time.time() - 1)  # ended
    assert store.pinned() == {key("forever")}
    store.put(key("e1"), entry())
    assert key("ttl") not in store and key("forever") in store
    assert store.collect_garbage(("kv",), grace_s=600)["expired_pins"] == 1 and store.pinned() == {key("forever")}


EVICTOR = """
import hashlib, sys, numpy as np
from steerc.stores import DiskStore, StoredContext
store = DiskStore(sys.argv[1], max_bytes=int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    key = hashlib.sha256(f"{sys.argv[4]}-{i}".encode()).hexdigest()
    store.put(key, StoredContext({"x": np.full(4000, i, np.float32)}, {"kind": "prepared", "i": i, "writer": sys.argv[4]}))
    store.get(hashlib.sha256(f"{sys.argv[4]}-{i // 2}".encode()).hexdigest())  # reads among the writes
"""


def test_two_processes_evicting_one_folder_never_show_a_torn_or_foreign_entry(tmp_path):
    import subprocess
    import sys

    size = len(__import__("steerc.stores.base", fromlist=["entry_to_bytes"]).entry_to_bytes(key("a"), StoredContext({"x": np.zeros(4000, np.float32)},
                                                                                                                     {"kind": "prepared", "i": 0, "writer": "a"})))
    budget = 6 * size
    procs = [subprocess.Popen([sys.executable, "-c", EVICTOR, str(tmp_path), str(budget), "300", name]) for name in ("a", "b")]
    reader, seen = DiskStore(tmp_path), 0
    while any(p.poll() is None for p in procs):
        for path in tmp_path.glob("*/*.safetensors"):
            got = reader.get(path.stem)  # may be evicted between the glob and the read: a miss
            if got is not None:
                seen += 1
                i, writer = got.meta["i"], got.meta["writer"]
                assert path.stem == hashlib.sha256(f"{writer}-{i}".encode()).hexdigest() and np.all(got.tensors["x"] == i)
    assert [p.wait(60) for p in procs] == [0, 0]
    assert reader.stats.corrupt == 0 and seen > 0
    assert reader.bytes_used <= budget + size  # each writer keeps its own within the budget; two racing writers overshoot by one entry at most
