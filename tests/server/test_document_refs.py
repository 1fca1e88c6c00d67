"""A registered document's record holds its KV (a reference mark), on every store: registering
again marks it once, DELETE deletes the KV only when nothing else holds it, a budget evicts
document KVs nobody holds and keeps held ones, garbage collection leaves document KVs alone."""

import hashlib
import os
import time

import numpy as np
import pytest

from steerc.server.documents import DocumentRegistry, _record_key
from steerc.stores import DiskStore, MemoryStore, StoredContext, TieredStore
from steerc.stores.namespaced import NamespacedStore


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def document_kv(n: int = 4000) -> StoredContext:
    """A stand-in for a document's KV entry (kind ``document``, as steerc.steering.documents.cached writes it)."""
    return StoredContext({"kv.0": np.zeros(n, np.float32)}, {"kind": "document", "length": n, "start": 3})


SIZE = len(__import__("steerc.stores.base", fromlist=["entry_to_bytes"]).entry_to_bytes(key("a"), document_kv()))
STORES = {
    "memory": lambda tmp, budget=None: MemoryStore(budget or 1 << 30),
    "disk": lambda tmp, budget=None: DiskStore(tmp, budget),
    "tiered": lambda tmp, budget=None: TieredStore(MemoryStore(1 << 20), DiskStore(tmp, budget)),
}


def _register(registry: DocumentRegistry, text: str, kv_key: str) -> dict:
    """What the server does on POST /v1/documents: the KV first (unless there), then the record."""
    if kv_key not in registry.store:
        registry.store.put(kv_key, document_kv())
    return registry.save(text, 10, kv_key)


def _holders_besides(store, target: str) -> int:
    """How many holders ``target`` has, not counting a probe mark added and dropped here."""
    probe = key("probe")
    store.add_ref(target, probe)
    return store.drop_ref(target, probe)


@pytest.mark.parametrize("kind", sorted(STORES))
def test_registering_marks_the_kv_once_and_delete_removes_it_with_the_last_holder(tmp_path, kind):
    store = STORES[kind](tmp_path)
    registry = DocumentRegistry(store)
    made = _register(registry, "Paris is the capital of France.", key("kv-paris"))
    assert _holders_besides(store, key("kv-paris")) == 1
    again = _register(registry, "Paris is the capital of France.", key("kv-paris"))  # the same text: the same record, no second mark
    assert again["id"] == made["id"] and _holders_besides(store, key("kv-paris")) == 1
    assert registry.delete(made["id"])["deleted"] is True
    assert key("kv-paris") not in store and _holders_besides(store, key("kv-paris")) == 0
    assert _record_key(made["id"]) not in store


@pytest.mark.parametrize("kind", sorted(STORES))
def test_delete_keeps_a_kv_another_holder_still_uses(tmp_path, kind):
    store = STORES[kind](tmp_path)
    registry = DocumentRegistry(store)
    one = _register(registry, "Café", key("kv-shared"))  # two texts whose tokens are the same share one KV
    two = _register(registry, "Cafe\u0301", key("kv-shared"))
    store.add_ref(key("kv-shared"), key("another-holder"))
    assert one["id"] != two["id"] and _holders_besides(store, key("kv-shared")) == 3
    registry.delete(one["id"])
    assert key("kv-shared") in store and registry.public(registry.get(two["id"]))["cached"] is True
    registry.delete(two["id"])
    assert key("kv-shared") in store  # still held by the other holder
    assert store.drop_ref(key("kv-shared"), key("another-holder")) == 0


def test_two_tenants_registering_one_text_hold_two_kvs_each_deleted_with_its_own_record(tmp_path):
    shared = DiskStore(tmp_path)
    a, b = (DocumentRegistry(NamespacedStore(shared, name), name) for name in ("team-a", "team-b"))
    mine, theirs = _register(a, "One text.", key("kv")), _register(b, "One text.", key("kv"))
    assert mine["id"] != theirs["id"]
    a.delete(mine["id"])
    assert key("kv") not in a.store and key("kv") in b.store and b.public(b.get(theirs["id"]))["cached"] is True
    b.delete(theirs["id"])
    assert key("kv") not in b.store and not list(tmp_path.glob("[0-9a-f][0-9a-f]/*.safetensors"))


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_record_that_names_another_kv_lets_go_of_the_old_one(tmp_path, kind):
    store = STORES[kind](tmp_path)
    registry = DocumentRegistry(store)
    made = _register(registry, "A text.", key("kv-head-1"))
    _register(registry, "A text.", key("kv-head-2"))  # registered again behind another instruction head
    assert _holders_besides(store, key("kv-head-1")) == 0 and key("kv-head-1") in store  # evictable again, not deleted
    assert _holders_besides(store, key("kv-head-2")) == 1
    registry.delete(made["id"])
    assert key("kv-head-2") not in store and key("kv-head-1") in store


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_budget_evicts_document_kvs_nobody_holds_and_keeps_registered_ones(tmp_path, kind):
    store = STORES[kind](tmp_path, 4 * SIZE + 4096)  # room for four KVs and the small records
    registry = DocumentRegistry(store)
    held = _register(registry, "Registered.", key("kv-held"))
    store.put(key("kv-inline"), document_kv())  # an inline steer.documents text's KV: nobody holds it
    if kind == "disk":
        for name, ago in (("kv-held", 1000), ("kv-inline", 900)):  # the oldest: evicted first if holding did not count
            os.utime(store.path(key(name)), (time.time() - ago,) * 2)
    for i in range(6):  # a stream of other documents' KVs
        store.put(key(f"kv-{i}"), document_kv())
        assert store.bytes_used <= store.max_bytes
    assert key("kv-inline") not in store and store.get(key("kv-held")) is not None
    assert registry.get(held["id"])["kv_key"] == key("kv-held")  # the record is pinned: kept too
    registry.delete(held["id"])  # let go: the KV goes with its last holder
    assert key("kv-held") not in store


def test_garbage_collection_leaves_document_kvs_and_the_records_marks(tmp_path):
    store = DiskStore(tmp_path)
    registry = DocumentRegistry(store)
    _register(registry, "Registered.", key("kv-held"))
    store.put(key("kv-inline"), document_kv())
    old = time.time() - 7200
    for path in tmp_path.rglob("*"):  # everything long past the grace period
        os.utime(path, (old, old))
    assert store.collect_garbage(("kv",), grace_s=600) == {"temp_files": 0, "stale_marks": 0, "orphans": 0, "expired_pins": 0}
    assert key("kv-held") in store and key("kv-inline") in store  # the janitor's kinds: an unheld document stays for the budget
    assert _holders_besides(store, key("kv-held")) == 1  # the record's mark is no stale mark: its holder is there
