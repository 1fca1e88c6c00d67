"""RedisStore against a real redis-server: round trip, corruption, sharing, tiers, locks."""

import threading
import time

import numpy as np
import pytest

from steerc.errors import SteercError
from steerc.stores import MemoryStore, StoredContext, TieredStore, open_store
from steerc.stores.redis import RedisStore, StoreUnavailableError

KEY = "ab" * 32
OTHER = "cd" * 32


def _entry(seed: int = 0) -> StoredContext:
    rng = np.random.default_rng(seed)
    return StoredContext({"kv.0": rng.standard_normal((1, 2, 5, 4)).astype(np.float32), "selected": rng.random((2, 5)) > 0.5}, {"n": seed})


@pytest.fixture
def store(redis_server):
    s = RedisStore(redis_server.url, prefix=f"test:{time.monotonic_ns()}:")
    yield s
    s.clear()


def test_round_trip_is_exact_and_counted(store):
    assert store.get(KEY) is None and KEY not in store
    store.put(KEY, _entry(1))
    got = store.get(KEY)
    assert KEY in store and got.meta == {"n": 1}
    for name, array in _entry(1).tensors.items():
        assert got.tensors[name].dtype == array.dtype and np.array_equal(got.tensors[name], array)
    assert (store.stats.hits, store.stats.misses, store.stats.puts) == (1, 1, 1)
    assert store.delete(KEY) and not store.delete(KEY) and store.get(KEY) is None


def test_two_clients_share_entries(store, redis_server):
    other = RedisStore(redis_server.url, prefix=store.prefix)
    store.put(KEY, _entry(2))
    assert other.get(KEY).meta == {"n": 2}


def test_corrupt_value_is_dropped_not_used(store):
    store.put(KEY, _entry(3))
    raw = bytearray(store.client.get(store.prefix + KEY))
    raw[len(raw) // 2] ^= 0xFF
    store.client.set(store.prefix + KEY, bytes(raw))
    assert store.get(KEY) is None and store.stats.corrupt == 1
    assert store.client.exists(store.prefix + KEY) == 0  # removed, so it is recomputed once
    store.client.set(store.prefix + KEY, b"\x00\x01not safetensors")
    assert store.get(KEY) is None and store.stats.corrupt == 2


def test_entry_filed_under_another_key_is_refused(store):
    store.put(KEY, _entry(4))
    store.client.set(store.prefix + OTHER, store.client.get(store.prefix + KEY))
    assert store.get(OTHER) is None and store.stats.corrupt == 1


def test_clear_removes_only_its_prefix(store):
    store.put(KEY, _entry(5))
    store.client.set("unrelated:key", b"keep")
    store.clear()
    assert KEY not in store and store.client.get("unrelated:key") == b"keep"
    store.client.delete("unrelated:key")


def test_bad_keys_are_refused(store):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.get("../etc/passwd")


def test_unreachable_server_fails_at_open_with_the_fix():
    with pytest.raises(StoreUnavailableError, match="redis-server is running"):
        RedisStore("redis://127.0.0.1:1/0", connect_timeout=1)
    with pytest.raises(SteercError, match="invalid Redis URL"):
        RedisStore("redis://127.0.0.1:notaport/0")


def test_tiered_memory_hit_is_confirmed_by_redis(store, redis_server):
    """A memory copy of an entry another process deleted is not served."""
    tiered = TieredStore(MemoryStore(), store)
    tiered.put(KEY, _entry(6))
    assert tiered.lookup(KEY)[1] == "memory"
    RedisStore(redis_server.url, prefix=store.prefix).delete(KEY)  # another server deletes it
    assert tiered.lookup(KEY) == (None, "miss") and KEY not in tiered.memory
    store.put(KEY, _entry(7))  # another server stores it again
    entry, tier = tiered.lookup(KEY)
    assert tier == "redis" and entry.meta == {"n": 7}


def test_open_store_builds_a_tiered_redis_store(redis_server):
    s = open_store(redis_server.url, memory_bytes=1 << 20)
    assert isinstance(s, TieredStore) and isinstance(s.backing, RedisStore) and s.tier == "redis"


def test_lock_serialises_holders_across_clients(store, redis_server):
    """Two clients (as two processes would) never hold one key's lock at once."""
    other = RedisStore(redis_server.url, prefix=store.prefix)
    inside, overlaps = [], []

    def hold(s):
        with s.lock(KEY):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=hold, args=(s,)) for s in (store, other, store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlaps == [1, 1, 1, 1]
    assert store.client.exists(f"{store.prefix}lock:{KEY}") == 0  # released


def test_passwords_never_reach_messages():
    from steerc.stores.redis import _redacted

    assert _redacted("redis://user:s3cret@[::1]:6379/0") == "redis://user:***@[::1]:6379/0"
    with pytest.raises(StoreUnavailableError) as info:
        RedisStore("redis://:s3cret@127.0.0.1:1/0", connect_timeout=1)
    assert "s3cret" not in str(info.value) and ":***@127.0.0.1:1" in str(info.value)


def test_reference_marks_are_shared_by_clients_and_cleared(store, redis_server):
    other = RedisStore(redis_server.url, prefix=store.prefix)
    target, a, b = "1" * 64, "2" * 64, "3" * 64
    store.add_ref(target, a)
    other.add_ref(target, b)
    assert store.drop_ref(target, a) == 1 and other.drop_ref(target, a) == 1
    store.add_ref(target, a)
    store.clear()  # the marks are under the store's prefix
    assert other.drop_ref(target, b) == 0


def test_indexes_are_shared_by_clients_and_cleared(store, redis_server):
    other = RedisStore(redis_server.url, prefix=store.prefix)
    index, a, b = "1" * 64, "2" * 64, "3" * 64
    store.index_add(index, a)
    other.index_add(index, b)
    assert store.index_members(index) == {a, b}
    other.index_drop(index, a)
    assert store.index_members(index) == {b} and store.index_members(a) == set()
    store.clear()
    assert other.index_members(index) == set()


def test_a_pin_with_an_end_is_a_redis_expiry_and_one_without_clears_it(store):
    store.put(KEY, _entry())
    store.pin(KEY, time.time() + 100)
    left = store.client.pttl(store._name(KEY))
    assert 90_000 < left <= 100_000
    store.pin(KEY, None)
    assert store.client.pttl(store._name(KEY)) == -1  # no expiry
    store.pin(KEY, time.time() + 0.2)
    time.sleep(0.4)
    assert store.get(KEY) is None and KEY not in store  # Redis removed it: a miss


def test_an_out_of_memory_redis_is_an_outage_that_degrades(tmp_path):
    """A Redis at its maxmemory under noeviction refuses writes (OOM): the store raises
    StoreUnavailableError, which GuardedStore degrades like an outage (the answer goes on)."""
    from redis_server import Redis

    from steerc.stores.guarded import GuardedStore

    import redis

    r = Redis(tmp_path)
    try:
        admin = redis.Redis.from_url(r.url)
        admin.config_set("maxmemory", "1mb")
        admin.config_set("maxmemory-policy", "noeviction")
        big = StoredContext({"kv.0": np.zeros((1, 4, 512, 128), np.float32)}, {})  # 1 MiB: over the limit
        plain = RedisStore(r.url)
        for i in range(3):  # fill to the limit
            try:
                plain.put(f"{i:064x}", big)
            except StoreUnavailableError as exc:
                assert "out of memory" in str(exc) and "allkeys-lru" in str(exc)
                break
        else:
            pytest.fail("Redis took 3 MiB under a 1 MiB maxmemory")
        guarded = GuardedStore(TieredStore(MemoryStore(1 << 24), RedisStore(r.url)))
        guarded.put(OTHER, big)  # no raise: degraded to the fallback
        assert guarded.get(OTHER) is not None and guarded.get(OTHER).tensors["kv.0"].shape == (1, 4, 512, 128)
    finally:
        r.stop()
