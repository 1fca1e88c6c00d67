import os

import numpy as np
import pytest

from steerc.errors import SteercError
from steerc.stores import disk as disk_mod
from steerc.stores import (
    ContextStore,
    CorruptEntryError,
    DiskStore,
    MemoryStore,
    StoredContext,
    StoreUnavailableError,
    TieredStore,
    context_key,
    entry_from_bytes,
    entry_to_bytes,
    open_store,
)

KEY = context_key("engine-a", [1, 2, 3], "Answer briefly.", {"alpha": 0.5})


def _entry(seed=0, n=16):
    rng = np.random.default_rng(seed)
    tensors = {
        "0.key": rng.standard_normal((1, 2, n, 4)).astype(np.float32),
        "0.value": rng.standard_normal((1, 2, n, 4)).astype(np.float16),
        "ids": np.arange(n, dtype=np.int64),
        "mask": rng.random(n) > 0.5,
        "empty": np.zeros((1, 2, 0, 4), np.float32),
    }
    return StoredContext(tensors, {"length": n, "spans": [[0, 3], [5, 9]], "cfg": {"alpha": 0.5, "on": True, "none": None}})


def _key(i):
    return context_key("e", [i], "", {})


def _assert_same(a, b):
    assert sorted(a.tensors) == sorted(b.tensors)
    for name, arr in a.tensors.items():
        other = b.tensors[name]
        assert other.dtype == arr.dtype and other.shape == arr.shape and np.array_equal(other, arr), name
    assert b.meta == a.meta


def test_bytes_round_trip_is_exact():
    entry = _entry()
    back = entry_from_bytes(KEY, entry_to_bytes(KEY, entry))
    _assert_same(entry, back)
    assert back.tensors["mask"].dtype == np.bool_ and back.tensors["empty"].shape == (1, 2, 0, 4)
    assert back.meta["spans"] == [[0, 3], [5, 9]] and back.meta["cfg"]["none"] is None


def test_nbytes_counts_tensors_and_meta():
    entry = StoredContext({"a": np.zeros(10, np.float32), "b": np.zeros(3, np.int64)}, {"x": 1})
    assert entry.nbytes == 40 + 24 + len('{"x":1}')


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda b: b[: len(b) // 2], "unreadable"),
        (lambda b: b"\x00" * 64, "unreadable"),
        (lambda b: b[:-40] + bytes(x ^ 0xFF for x in b[-40:-20]) + b[-20:], "checksum mismatch"),
    ],
)
def test_damaged_bytes_are_refused(damage, match):
    with pytest.raises(CorruptEntryError, match=match) as info:
        entry_from_bytes(KEY, damage(entry_to_bytes(KEY, _entry())))
    assert KEY in str(info.value) and isinstance(info.value, SteercError)


def test_wrong_key_and_foreign_file_are_refused():
    data = entry_to_bytes(KEY, _entry())
    with pytest.raises(CorruptEntryError, match="filed under key"):
        entry_from_bytes(_key(1), data)
    from safetensors.numpy import save

    with pytest.raises(CorruptEntryError, match="not a steerc context"):
        entry_from_bytes(KEY, save({"a": np.zeros(2, np.float32)}))


def test_context_key_is_canonical_and_sensitive():
    base = dict(engine_id="e", context_ids=[1, 2, 3], prefix="p", config={"a": 1, "b": [1, 2]})
    key = context_key(**base)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert context_key("e", (1, 2, 3), "p", {"b": [1, 2], "a": 1}) == key  # tuple ids, other dict order
    assert context_key("e", np.array([1, 2, 3]), "p", base["config"]) == key
    variants = [
        dict(base, engine_id="f"),
        dict(base, context_ids=[1, 2, 4]),
        dict(base, prefix="q"),
        dict(base, prefix=[1, 2]),
        dict(base, config={"a": 2, "b": [1, 2]}),
        dict(base, config={"a": 1}),
    ]
    keys = {context_key(**v) for v in variants}
    assert len(keys) == len(variants) and key not in keys


@pytest.mark.parametrize("bad", [{"layers": {1, 2}}, {"scale": float("nan")}, {"arr": np.zeros(2)}])
def test_context_key_rejects_non_json_config(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"config key '{name}'"):
        context_key("e", [1], "p", bad)


def _sized(nbytes):
    return StoredContext({"x": np.zeros(nbytes, np.uint8)}, {})  # meta "{}" adds 2 bytes


def test_memory_store_evicts_least_recently_used():
    store = MemoryStore(max_bytes=3 * 102)
    for i in range(3):
        store.put(_key(i), _sized(100))
    assert store.bytes_used == 306
    assert store.get(_key(0)) is not None  # 0 is now most recent; 1 is the oldest
    store.put(_key(3), _sized(100))
    assert [(_key(i) in store) for i in range(4)] == [True, False, True, True]
    store.put(_key(4), _sized(150))  # needs two slots: evicts 2 then 0
    assert [(_key(i) in store) for i in range(5)] == [False, False, False, True, True]
    assert store.bytes_used == 102 + 152
    assert store.stats.to_dict() == {"hits": 1, "misses": 0, "corrupt": 0, "evictions": 3, "puts": 5}


def test_memory_store_rejects_oversize_and_replaces_in_place(caplog):
    store = MemoryStore(max_bytes=100)
    store.put(_key(0), _sized(50))
    store.put(_key(0), _sized(60))
    assert store.bytes_used == 62 and store.stats.evictions == 0
    store.put(_key(0), _sized(500))  # too big: not stored, and the stale value is gone
    assert _key(0) not in store and store.bytes_used == 0
    assert "exceeds the memory store budget" in caplog.text
    assert store.get(_key(0)) is None and store.stats.misses == 1
    assert store.delete(_key(0)) is False


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_memory_store_validates_budget(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryStore(bad)


def test_disk_store_round_trip_and_layout(tmp_path):
    store = DiskStore(tmp_path)
    entry = _entry()
    assert store.get(KEY) is None and KEY not in store
    store.put(KEY, entry)
    path = tmp_path / KEY[:2] / f"{KEY}.safetensors"
    assert KEY in store and path.is_file()
    assert os.listdir(path.parent) == [path.name]  # no temporary left behind
    _assert_same(entry, DiskStore(tmp_path).get(KEY))  # a fresh store reads it
    assert store.get(KEY) is not None
    assert store.stats.to_dict() == {"hits": 1, "misses": 1, "corrupt": 0, "evictions": 0, "puts": 1}
    assert store.delete(KEY) is True and not path.exists() and store.delete(KEY) is False


def test_disk_store_failed_write_keeps_old_file(tmp_path, monkeypatch):
    store = DiskStore(tmp_path)
    old = _entry(seed=1)
    store.put(KEY, old)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(disk_mod.os, "replace", boom)
    with pytest.raises(StoreUnavailableError, match="disk full"):
        store.put(KEY, _entry(seed=2))
    monkeypatch.undo()
    assert os.listdir(tmp_path / KEY[:2]) == [f"{KEY}.safetensors"]
    _assert_same(old, store.get(KEY))


@pytest.mark.parametrize("key", ["../../etc/passwd", KEY.upper(), KEY[:-1], KEY + "0", "", None])
def test_disk_store_rejects_bad_keys(tmp_path, key):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        DiskStore(tmp_path).get(key)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_disk_store_drops_corrupt_files(tmp_path, caplog, damage):
    store = DiskStore(tmp_path)
    store.put(KEY, _entry())
    path = store.path(KEY)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        header = 8 + int.from_bytes(raw[:8], "little")
        mid = header + (len(raw) - header) // 2
        raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])
    else:
        raw = raw[: len(raw) - 100]
    path.write_bytes(bytes(raw))
    assert KEY in store
    assert store.get(KEY) is None
    assert not path.exists() and KEY not in store
    assert store.stats.corrupt == 1 and store.stats.hits == 0
    assert "dropping unreadable stored context" in caplog.text


def test_disk_store_clear_leaves_other_files(tmp_path):
    store = DiskStore(tmp_path)
    store.put(_key(1), _sized(10))
    store.put(_key(2), _sized(10))
    (tmp_path / "notes.txt").write_text("keep")
    store.clear()
    assert _key(1) not in store and _key(2) not in store and (tmp_path / "notes.txt").read_text() == "keep"


def test_tiered_store_promotes_and_reports_tier(tmp_path):
    DiskStore(tmp_path).put(KEY, _entry())  # written by an earlier process
    store = TieredStore(MemoryStore(), DiskStore(tmp_path))
    assert KEY in store and KEY not in store.memory
    entry, tier = store.lookup(KEY)
    assert tier == "disk" and KEY in store.memory
    _assert_same(_entry(), entry)
    assert store.lookup(KEY)[1] == "memory"
    assert store.lookup(_key(9)) == (None, "miss")
    assert store.stats.to_dict() == {"hits": 2, "misses": 1, "corrupt": 0, "evictions": 0, "puts": 0}
    store.put(_key(5), _sized(10))
    assert _key(5) in store.memory and _key(5) in store.backing
    assert store.delete(_key(5)) is True and _key(5) not in store.memory and _key(5) not in store.backing
    store.clear()
    assert KEY not in store


def test_open_store_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERC_CONTEXT_STORE", str(tmp_path / "env"))
    default = open_store(None, memory_bytes=1234)
    assert isinstance(default, TieredStore) and default.memory.max_bytes == 1234
    assert default.backing.root == tmp_path / "env"
    monkeypatch.delenv("STEERC_CONTEXT_STORE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert open_store(None).backing.root == tmp_path / "home" / ".cache" / "steerc" / "contexts"
    memory = open_store("memory")
    assert type(memory) is MemoryStore and isinstance(memory, ContextStore)
    folder = open_store(str(tmp_path / "ctx"))
    assert isinstance(folder, TieredStore) and folder.backing.root == tmp_path / "ctx"
    with pytest.raises(SteercError, match="redis-server is running"):  # nothing listens on port 1: refused at open, not on first use
        open_store("redis://127.0.0.1:1/0")


@pytest.mark.parametrize("kind", ["memory", "disk", "tiered"])
def test_reference_marks_count_holders_per_target(tmp_path, kind):
    store = {"memory": lambda: MemoryStore(1 << 20), "disk": lambda: DiskStore(tmp_path), "tiered": lambda: TieredStore(MemoryStore(1 << 20), DiskStore(tmp_path))}[kind]()
    target, a, b = _key(1), _key(2), _key(3)
    store.add_ref(target, a)
    store.add_ref(target, a)  # marking twice is one holder
    store.add_ref(target, b)
    store.add_ref(_key(4), a)  # another target's marks are apart
    assert store.drop_ref(target, a) == 1 and store.drop_ref(target, a) == 1  # dropping twice too
    assert store.drop_ref(target, b) == 0 and store.drop_ref(target, b) == 0
    assert store.drop_ref(_key(4), a) == 0
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.add_ref(target, "../x")
    if kind != "memory":  # the marks live beside the entries: another handle on the folder sees them
        store.add_ref(target, a)
        assert DiskStore(tmp_path).drop_ref(target, a) == 0
        store.add_ref(target, b)
        store.clear()
        assert not (tmp_path / "refs").exists() and DiskStore(tmp_path).drop_ref(target, b) == 0


@pytest.mark.parametrize("kind", ["memory", "disk", "tiered", "namespaced"])
def test_indexes_are_sets_of_keys_kept_apart_by_name_and_namespace(tmp_path, kind):
    from steerc.stores.namespaced import NamespacedStore

    make = {"memory": lambda: MemoryStore(1 << 20), "disk": lambda: DiskStore(tmp_path), "tiered": lambda: TieredStore(MemoryStore(1 << 20), DiskStore(tmp_path)),
            "namespaced": lambda: NamespacedStore(DiskStore(tmp_path), "team-a")}
    store = make[kind]()
    index, other, a, b = _key(1), _key(2), _key(3), _key(4)
    assert store.index_members(index) == set()
    store.index_add(index, a)
    store.index_add(index, a)  # a set: adding twice is one member
    store.index_add(index, b)
    store.index_add(other, a)
    assert store.index_members(index) == {a, b} and store.index_members(other) == {a}
    store.index_drop(index, a)
    store.index_drop(index, a)  # dropping what is gone is nothing
    assert store.index_members(index) == {b} and store.index_members(other) == {a}
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.index_add(index, "../x")
    if kind == "namespaced":  # another namespace's index of the same name is another index
        assert NamespacedStore(DiskStore(tmp_path), "team-b").index_members(index) == set()
        assert NamespacedStore(DiskStore(tmp_path), "team-a").index_members(index) == {b}
    elif kind != "memory":  # shared through the folder, and cleared with it
        assert DiskStore(tmp_path).index_members(index) == {b}
        store.clear()
        assert DiskStore(tmp_path).index_members(index) == set()


def test_a_store_spec_names_its_backing_store_by_scheme(tmp_path, monkeypatch):
    from steerc.stores import registry

    by_url = open_store(f"file://{tmp_path / 'ctx'}")
    assert isinstance(by_url, TieredStore) and by_url.backing.root == tmp_path / "ctx"
    assert registry.scheme_of("Redis://h:1/0") == "redis" and registry.scheme_of(str(tmp_path)) == "file" and registry.scheme_of("C:/x") == "file"
    with pytest.raises(SteercError, match=r"unknown context store scheme 's3'.*file://, redis://"):
        open_store("s3://bucket/contexts")  # not read as a folder called 's3:'
    assert not (tmp_path / "s3:").exists()
    # a new backing store is one line in the registry
    monkeypatch.setitem(registry.BACKING_STORES, "mirror", "steerc.stores.disk:DiskStore")
    with pytest.raises(SteercError, match="unknown context store scheme"):
        registry.backing_store("nope://x", 1.0)
    mirrored = open_store(f"mirror://{tmp_path / 'm'}")
    assert isinstance(mirrored.backing, DiskStore) and mirrored.backing.root == tmp_path / "m"


def test_a_store_without_a_spec_form_says_so():
    with pytest.raises(NotImplementedError, match="MemoryStore is not opened from a store spec"):
        MemoryStore.from_spec("x", 1.0)
