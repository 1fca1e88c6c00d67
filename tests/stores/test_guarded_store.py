"""GuardedStore: store failures degrade (miss, dropped write, local lock), with a bounded backoff."""

import errno
import os

import numpy as np
import pytest

from steerc.stores import DiskStore, MemoryStore, StoredContext, StoreUnavailableError, TieredStore, context_key
from steerc.stores import disk as disk_mod
from steerc.stores.guarded import Backoff, GuardedStore
from steps import FailingStore

KEY = context_key("engine-a", [1, 2, 3], "Answer briefly.", {"alpha": 0.5})
OTHER = context_key("engine-a", [4, 5], "Answer briefly.", {"alpha": 0.5})


def _entry() -> StoredContext:
    return StoredContext({"k": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"n": 3})


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    clock = Clock()
    b = Backoff(first=1, most=30, clock=clock)
    assert b.open() and not b.failing
    assert b.failed() is True and b.delay == 1  # an outage starts
    assert not b.open()
    clock.now += 1
    assert b.open()
    delays = []
    for _ in range(7):
        assert b.failed() is False
        delays.append(b.delay)
    assert delays == [2, 4, 8, 16, 30, 30, 30]
    assert not b.open()
    clock.now += 29.9
    assert not b.open()
    clock.now += 0.1
    assert b.open()
    assert b.succeeded() is True and not b.failing and b.open()
    assert b.succeeded() is False
    assert b.failed() is True and b.delay == 1  # a new outage starts from the first interval


def test_a_failing_store_is_a_miss_a_dropped_write_and_counted_once_per_operation(caplog):
    clock, inner, seen = Clock(), FailingStore(), []
    guard = GuardedStore(inner, Backoff(clock=clock), on_error=lambda backend, op: seen.append((backend, op)))
    guard.put(KEY, _entry())
    inner.down = True
    with guard.track() as used:
        assert guard.lookup(KEY) == (None, "miss")
    assert used.unavailable and used.state == "unavailable"
    assert seen == [("redis", "get")] and guard.errors == {("redis", "get"): 1} and not guard.available
    calls = inner.calls
    with guard.track() as used:
        guard.put(OTHER, _entry())  # skipped during the backoff: not tried, not counted
        assert OTHER not in guard and guard.get(KEY) is None
    assert used.unavailable and inner.calls == calls and seen == [("redis", "get")]
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()
    clock.now += 1
    guard.put(OTHER, _entry())  # tried again, fails again: the next interval is 2 s
    assert seen[-1] == ("redis", "put") and guard.backoff.delay == 2 and inner.calls == calls + 1
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1  # logged once per outage
    inner.down = False
    clock.now += 2
    with guard.track() as used:
        assert guard.get(KEY) is not None
    assert not used.unavailable and used.state == "ok" and guard.available
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_tiered_store_keeps_serving_from_memory_while_its_backing_store_is_down():
    clock, backing = Clock(), FailingStore()
    guard = GuardedStore(TieredStore(MemoryStore(1 << 20), backing), Backoff(clock=clock))
    guard.put(KEY, _entry())
    backing.down = True
    assert guard.lookup(KEY)[1] == "memory"  # the tiered lookup failed (confirming in Redis); memory answers
    guard.put(OTHER, _entry())  # kept in memory, dropped for Redis
    assert guard.lookup(OTHER)[1] == "memory"
    backing.down = False
    assert OTHER not in backing
    clock.now += 1
    assert guard.lookup(OTHER) == (None, "miss")  # Redis is the source of truth again: it never got OTHER
    assert guard.lookup(KEY)[1] == "memory"


def test_the_lock_falls_back_to_a_process_lock_and_errors_in_its_block_propagate():
    class LockFails(FailingStore):
        def lock(self, key):
            self._check()
            return super().lock(key)

    inner = LockFails()
    guard = GuardedStore(inner, Backoff(clock=Clock()))
    inner.down = True
    with guard.lock(KEY):
        pass
    assert guard.errors == {("redis", "lock"): 1}
    with pytest.raises(ValueError, match="inside"), guard.lock(KEY):
        raise ValueError("inside")


def test_ping_raises_and_records_the_outage_then_recovers():
    inner = FailingStore()
    guard = GuardedStore(inner, Backoff(clock=Clock()))
    inner.down = True
    with pytest.raises(StoreUnavailableError, match="connection refused"):
        guard.ping()
    assert not guard.available and guard.errors == {("redis", "ping"): 1}
    inner.down = False
    guard.ping()  # readiness asks even during the backoff
    assert guard.available


def test_readiness_answers_the_last_error_during_the_backoff_without_asking_the_store():
    clock, inner = Clock(), FailingStore()
    guard = GuardedStore(inner, Backoff(clock=clock))
    assert guard.readiness() is None and inner.calls == 1  # healthy: a ping each time
    assert guard.readiness() is None and inner.calls == 2
    inner.down = True
    assert "connection refused" in guard.readiness() and inner.calls == 3  # the ping that finds the outage
    assert guard.backoff.delay == 1 and not guard.available
    for _ in range(5):  # within the interval: the last error at once, the store is not asked
        assert "connection refused" in guard.readiness()
    assert inner.calls == 3 and guard.errors == {("redis", "ping"): 1}
    clock.now += 1  # a second after the failure: one probe, which fails again (requests wait 2 s now)
    assert "connection refused" in guard.readiness() and inner.calls == 4 and guard.backoff.delay == 2
    assert "connection refused" in guard.readiness() and inner.calls == 4
    inner.down = False
    clock.now += 0.9
    assert guard.readiness() is not None and inner.calls == 4  # within a second of the last failure
    clock.now += 0.1
    assert guard.backoff.failing and not guard.backoff.open()  # the requests' interval is not over yet
    assert guard.readiness() is None and inner.calls == 5 and guard.available  # a probe finds the store back and ends the outage
    assert guard.readiness() is None and inner.calls == 6


def test_only_one_readiness_probe_waits_on_a_failing_store():
    import threading

    class Hangs(FailingStore):
        def __init__(self):
            super().__init__()
            self.entered, self.release = threading.Event(), threading.Event()

        def ping(self):
            self.entered.set()
            self.release.wait(10)  # a Redis that does not answer until its timeout
            super().ping()

    clock, inner = Clock(), Hangs()
    guard = GuardedStore(inner, Backoff(clock=clock))
    inner.down = True
    inner.release.set()
    assert guard.readiness() is not None  # the outage starts
    clock.now += 1
    inner.release.clear()
    inner.entered.clear()
    answers = []
    prober = threading.Thread(target=lambda: answers.append(guard.readiness()))
    prober.start()
    assert inner.entered.wait(10)
    calls = inner.calls
    assert "connection refused" in guard.readiness() and inner.calls == calls  # at once, while the other probe waits
    inner.release.set()
    prober.join(10)
    assert answers and "connection refused" in answers[0]


def test_registry_operations_raise_but_are_counted_and_tried_during_the_backoff():
    clock, inner, seen = Clock(), FailingStore(), []
    guard = GuardedStore(inner, Backoff(clock=clock), on_error=lambda backend, op: seen.append((backend, op)))
    registry = guard.raising("registry")
    registry.put(KEY, _entry())
    assert registry.get(KEY) is not None and KEY in registry and registry.tier == "redis"
    inner.down = True
    with pytest.raises(StoreUnavailableError, match="connection refused"):
        registry.get(KEY)
    assert seen == [("redis", "registry_get")] and guard.errors == {("redis", "registry_get"): 1}
    assert not guard.available and guard.backoff.delay == 1  # the outage is the store's: degraded operations skip it too
    calls = inner.calls
    with pytest.raises(StoreUnavailableError):  # tried during the backoff (its record lives only in the store)
        registry.put(OTHER, _entry())
    with pytest.raises(StoreUnavailableError):
        _ = OTHER in registry
    assert inner.calls == calls + 2 and seen[1:] == [("redis", "registry_put"), ("redis", "registry_contains")]
    assert guard.get(KEY) is None and inner.calls == calls + 2  # a degraded get still skips it
    inner.down = False
    assert registry.get(KEY) is not None and guard.available  # a success ends the outage
    assert registry.delete(KEY) and KEY not in registry


def test_a_full_disk_drops_the_write_leaves_no_partial_entry_and_stores_later_entries(tmp_path, monkeypatch):
    clock = Clock()
    disk = DiskStore(tmp_path)
    guard = GuardedStore(disk, Backoff(clock=clock))
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, fd, mode):
            self.fh = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_mod.os, "fdopen", FullFile)
    with guard.track() as used:
        guard.put(KEY, _entry())
    assert used.unavailable and guard.errors == {("disk", "put"): 1}
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing half-written, no temporary left
    with pytest.raises(StoreUnavailableError, match="No space left"):
        disk.put(KEY, _entry())
    monkeypatch.undo()
    clock.now += 1
    guard.put(OTHER, _entry())  # space is back: stored
    assert guard.available and guard.get(OTHER) is not None and disk.get(OTHER) is not None


def test_an_unreadable_disk_folder_is_unavailable_not_corrupt(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    disk = DiskStore(tmp_path)
    disk.put(KEY, _entry())
    disk.path(KEY).chmod(0)
    try:
        with pytest.raises(StoreUnavailableError, match="could not read"):
            disk.get(KEY)
        assert disk.path(KEY).exists() and disk.stats.corrupt == 0  # kept: a permission problem is not a torn entry
    finally:
        disk.path(KEY).chmod(0o644)


def test_disk_ping_checks_the_folder_takes_a_file(tmp_path):
    DiskStore(tmp_path / "new").ping()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailableError, match="disk context store"):
        DiskStore(tmp_path / "file" / "sub").ping()
