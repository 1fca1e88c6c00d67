"""get_or_build: the one store fill (look up, lock, look up again, build, put)."""

import threading
import time

import numpy as np

from steerc.steering.cache_fill import get_or_build
from steerc.stores import MemoryStore, NullStore, StoredContext, context_key

KEY = context_key("engine-a", [1, 2, 3], "", {"what": "test"})


def _entry(value: float = 1.0) -> StoredContext:
    return StoredContext({"x": np.full(3, value, np.float32)}, {"kind": "test"})


def test_a_miss_is_built_and_stored_then_hits():
    store, builds = MemoryStore(1 << 20), []
    entry, tier = get_or_build(store, KEY, lambda: builds.append(1) or _entry())
    assert tier == "miss" and KEY in store and len(builds) == 1
    again, tier = get_or_build(store, KEY, lambda: builds.append(1) or _entry(2.0))
    assert tier == "memory" and len(builds) == 1 and again.tensors["x"][0] == 1.0


def test_concurrent_callers_build_a_new_key_once():
    store, builds, results = MemoryStore(1 << 20), [], []

    def build():
        builds.append(1)
        time.sleep(0.05)  # the others arrive while this one builds
        return _entry()

    def call():
        results.append(get_or_build(store, KEY, build)[1])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(builds) == 1 and sorted(results) == ["memory"] * 3 + ["miss"]


def test_a_null_store_builds_every_time():
    store, builds = NullStore(), []
    for _ in range(2):
        assert get_or_build(store, KEY, lambda: builds.append(1) or _entry())[1] == "miss"
    assert len(builds) == 2


def test_the_load_and_save_pair_is_used_for_both_lookups_and_the_write():
    store, calls = MemoryStore(1 << 20), []

    def load(s, key):
        calls.append("load")
        entry, tier = s.lookup(key)
        return (None if entry is None else float(entry.tensors["x"][0])), tier

    def save(s, key, value):
        calls.append("save")
        s.put(key, _entry(value))

    assert get_or_build(store, KEY, lambda: 7.0, load=load, save=save) == (7.0, "miss")
    assert calls == ["load", "load", "save"]
    assert get_or_build(store, KEY, lambda: 8.0, load=load, save=save) == (7.0, "memory")
