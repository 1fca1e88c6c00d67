"""NullStore: a ContextStore that keeps nothing (what a Steerer without a store fills)."""

import threading

import numpy as np
import pytest

from steerc.stores import ContextStore, NullStore, StoredContext, context_key

KEY = context_key("engine-a", [1, 2, 3], "Answer briefly.", {"alpha": 0.5})
OTHER = context_key("engine-a", [4], "", {})


def _entry() -> StoredContext:
    return StoredContext({"x": np.arange(4, dtype=np.float32)}, {"kind": "test"})


def test_it_is_a_context_store_that_keeps_nothing():
    store = NullStore()
    assert isinstance(store, ContextStore)
    store.put(KEY, _entry())
    assert store.get(KEY) is None and KEY not in store
    assert store.lookup(KEY) == (None, "miss")
    assert store.delete(KEY) is False
    store.clear()
    assert store.get(KEY) is None


def test_stats_count_misses_and_nothing_else():
    store = NullStore()
    store.put(KEY, _entry())
    store.get(KEY), store.lookup(KEY)
    assert store.stats.to_dict() == {"hits": 0, "misses": 2, "corrupt": 0, "evictions": 0, "puts": 0}


def test_reference_marks_leave_no_holder():
    store = NullStore()
    store.add_ref(KEY, OTHER)
    assert store.drop_ref(KEY, OTHER) == 0
    assert store.drop_ref(KEY, OTHER) == 0


def test_bad_keys_are_refused_as_by_every_store():
    store = NullStore()
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.put("not-a-key", _entry())
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.add_ref(KEY, "nope")


def test_lock_is_a_no_op_that_never_blocks():
    store = NullStore()
    done = threading.Event()
    with store.lock(KEY):  # another thread's lock of the same key does not wait: nothing is shared
        def hold():
            with store.lock(KEY):
                done.set()

        worker = threading.Thread(target=hold)
        worker.start()
        worker.join(5)
    assert done.is_set()
    with store.lock(KEY), store.lock(KEY):  # re-entrant too
        pass


def test_a_steerer_without_a_store_uses_a_null_store(tiny_text_engine):
    from steerc.runtime import Engine
    from steerc.steering.answer import Steerer
    from steerc.steering.config import SteerConfig

    steerer = Steerer(Engine.load(tiny_text_engine, threads=1), SteerConfig(method="none"))
    assert isinstance(steerer.store, NullStore) and isinstance(steerer.method_context.store, NullStore)
    context = "Alpha beta gamma. Delta epsilon."
    assert steerer.prepare(context)[1] == "miss" and steerer.prepare(context)[1] == "miss"  # nothing kept: prepared afresh each time
    assert steerer.store.stats.hits == 0 and steerer.store.stats.misses > 0
