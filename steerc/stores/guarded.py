"""``GuardedStore``: a store whose failures degrade a request instead of failing it.

The context store is a cache: when it cannot be read or written (Redis down or slow, disk
full, permission denied), a request can still prepare its context itself. ``GuardedStore``
wraps a store so that a failed ``get``/``lookup`` is a miss, a failed ``put`` is dropped (the
stores write atomically, so nothing half-written is left), a failed ``lock`` falls back to a
per-process lock and a failed ``in`` is False. After a failure the store is skipped for a
backoff interval (1 s, doubling up to 30 s; a success resets it), then tried again. The
outage is logged once when it starts and once when it ends; every failed operation is
counted (``errors``, and ``on_error(backend, operation)``, which the server turns into
``steerc_store_errors_total``). While the inner store is skipped, a tiered store's memory
tier still serves (and keeps) this process's entries.

``track()`` tells one request whether the store failed it: ``with guard.track() as used: ...``,
then ``used.unavailable``. Operations that must not degrade (a registered context's record)
go through ``guard.raising("registry")``: the inner store, tried even during a backoff, whose
failures raise :class:`StoreUnavailableError` but are still counted (as operations
``registry_get``, ``registry_put``, ``registry_delete``, ``registry_contains``) and logged with the
outage, and whose successes end it.

``readiness()`` is what ``/ready`` asks: during an outage it probes the store at most once per
``backoff.first`` seconds (1 s) since the last failure, and only one caller at a time; every
other call answers the last error at once, without asking the store (a store that hangs would
cost every call the store timeout). A probe that succeeds ends the outage, so a store that
comes back is used again within about a second of a load balancer's probe, not only when the
requests' longer backoff (up to 30 s) is over. A healthy store is pinged on every call (a Redis
``PING``, a small file in the disk folder: cheap, and a cached answer would hide an outage's start).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from steerc.stores.base import ContextStore, StoredContext, StoreUnavailableError

__all__ = ["Backoff", "GuardedStore", "RaisingStore", "StoreUse"]

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """When to try a failing store again: ``first`` seconds after a failure, doubling on each
    further failure up to ``most``; a success resets it. ``clock`` is injectable for tests."""

    first: float = 1.0
    most: float = 30.0
    clock: Callable[[], float] = time.monotonic
    delay: float = 0.0  # 0: healthy
    retry_at: float = 0.0

    @property
    def failing(self) -> bool:
        return self.delay > 0

    def open(self) -> bool:
        """Whether the store may be tried now (healthy, or its backoff interval is over)."""
        return not self.failing or self.clock() >= self.retry_at

    def failed(self) -> bool:
        """Record a failure; True when it starts an outage."""
        started = not self.failing
        self.delay = self.first if started else min(self.delay * 2, self.most)
        self.retry_at = self.clock() + self.delay
        return started

    def succeeded(self) -> bool:
        """Record a success; True when it ends an outage."""
        ended = self.failing
        self.delay, self.retry_at = 0.0, 0.0
        return ended


@dataclass
class StoreUse:
    """Whether the store failed (or was skipped) during one request."""

    unavailable: bool = False

    @property
    def state(self) -> str:
        return "unavailable" if self.unavailable else "ok"


class GuardedStore(ContextStore):
    """``inner`` with its failures degraded; see the module doc."""

    def __init__(self, inner: ContextStore, backoff: Backoff | None = None, on_error: Callable[[str, str], None] | None = None) -> None:
        super().__init__()
        self.inner, self.backoff, self.on_error = inner, backoff or Backoff(), on_error
        self.tier = inner.tier
        self.stats = inner.stats
        self.kv_scheme = inner.kv_scheme
        self.fallback: ContextStore | None = getattr(inner, "memory", None)  # a tiered store's memory tier
        self.errors: dict[tuple[str, str], int] = {}
        self.last_error: str | None = None
        self._state = threading.Lock()
        self._probe = threading.Lock()  # held by the one readiness probe of a failing store
        self._local = threading.local()
        self._outage_start = 0.0

    # -- bookkeeping ------------------------------------------------------------------------
    @contextlib.contextmanager
    def track(self) -> Iterator[StoreUse]:
        """Collect, for this thread until the block ends, whether the store failed or was skipped."""
        use, previous = StoreUse(), getattr(self._local, "use", None)
        self._local.use = use
        try:
            yield use
        finally:
            self._local.use = previous

    def _mark(self) -> None:
        use = getattr(self._local, "use", None)
        if use is not None:
            use.unavailable = True

    @property
    def available(self) -> bool:
        """False while the store is in an outage (it failed and has not answered since)."""
        return not self.backoff.failing

    def _failure(self, operation: str, exc: StoreUnavailableError) -> None:
        self._mark()
        with self._state:
            self.errors[(self.tier, operation)] = self.errors.get((self.tier, operation), 0) + 1
            self.last_error = str(exc)
            started = self.backoff.failed()
            if started:
                self._outage_start = time.monotonic()
            delay = self.backoff.delay
        if self.on_error is not None:
            self.on_error(self.tier, operation)
        if started:
            log.warning("the %s context store is unavailable (%s failed: %s); answering without it, retrying after %.0f s (backing off up to %.0f s)",
                        self.tier, operation, exc, delay, self.backoff.most)
        else:
            log.debug("the %s context store still fails (%s); next try in %.0f s", self.tier, exc, delay)

    def _success(self) -> None:
        if not self.backoff.failing:
            return
        with self._state:
            ended = self.backoff.succeeded()
        if ended:
            log.warning("the %s context store answers again after %.1f s; using it again", self.tier, time.monotonic() - self._outage_start)

    def _call(self, operation: str, fn: Callable[[], Any], degraded: Callable[[], Any]) -> Any:
        """``fn()``, or ``degraded()`` when the store is skipped or fails."""
        if not self.backoff.open():
            self._mark()
            return degraded()
        try:
            result = fn()
        except StoreUnavailableError as exc:
            self._failure(operation, exc)
            return degraded()
        self._success()
        return result

    def _raising(self, operation: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` even during a backoff; a failure is counted, then raised."""
        try:
            result = fn()
        except StoreUnavailableError as exc:
            self._failure(operation, exc)
            raise
        self._success()
        return result

    def raising(self, prefix: str) -> RaisingStore:
        """The inner store for operations that must not degrade; see :class:`RaisingStore`."""
        return RaisingStore(self, prefix)

    def readiness(self) -> str | None:
        """None when the store answers, else why not; see the module doc."""
        if self.backoff.failing:
            since_failure = self.backoff.clock() - (self.backoff.retry_at - self.backoff.delay)
            due = self.backoff.open() or since_failure >= self.backoff.first
            if not due or not self._probe.acquire(blocking=False):
                return self.last_error or f"the {self.tier} context store is unavailable"
            try:
                return self._ping_problem()
            finally:
                self._probe.release()
        return self._ping_problem()

    def _ping_problem(self) -> str | None:
        try:
            self.ping()
        except StoreUnavailableError as exc:
            return str(exc)
        return None

    def _fallback(self, method: str, *args, default=None):
        return getattr(self.fallback, method)(*args) if self.fallback is not None else default

    # -- the store interface ----------------------------------------------------------------
    def ping(self) -> None:
        """Ping the inner store now (even during a backoff; ``readiness()`` decides when to); raises if it fails."""
        self._raising("ping", self.inner.ping)

    def lookup(self, key: str) -> tuple[StoredContext | None, str]:
        def degraded():
            entry = self._fallback("get", key)
            return entry, ("memory" if entry is not None else "miss")

        return self._call("get", lambda: self.inner.lookup(key), degraded)

    def get(self, key: str) -> StoredContext | None:
        return self.lookup(key)[0]

    def put(self, key: str, entry: StoredContext) -> None:
        self._call("put", lambda: self.inner.put(key, entry), lambda: self._fallback("put", key, entry))

    def delete(self, key: str) -> bool:
        return self._call("delete", lambda: self.inner.delete(key), lambda: False)

    def add_ref(self, target: str, holder: str) -> None:
        self._call("put", lambda: self.inner.add_ref(target, holder), lambda: None)

    def drop_ref(self, target: str, holder: str) -> int:
        return self._call("delete", lambda: self.inner.drop_ref(target, holder), lambda: 1)  # unknown: keep the target

    def __contains__(self, key: str) -> bool:
        return self._call("contains", lambda: key in self.inner, lambda: self._fallback("__contains__", key, default=False))

    def index_add(self, index: str, member: str) -> None:
        self._call("put", lambda: self.inner.index_add(index, member), lambda: None)

    def index_drop(self, index: str, member: str) -> None:
        self._call("delete", lambda: self.inner.index_drop(index, member), lambda: None)

    def index_members(self, index: str) -> set[str]:
        return self._call("get", lambda: self.inner.index_members(index), set)

    def clear(self) -> None:
        self._call("clear", self.inner.clear, lambda: None)

    def pin(self, key: str, until: float | None = None) -> None:
        self._call("put", lambda: self.inner.pin(key, until), lambda: None)

    def unpin(self, key: str) -> None:
        self._call("delete", lambda: self.inner.unpin(key), lambda: None)

    def collect_garbage(self, shared_kinds: tuple[str, ...] = ("kv",), grace_s: float = 600.0) -> dict[str, int]:
        return self._call("gc", lambda: self.inner.collect_garbage(shared_kinds, grace_s), lambda: {})

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """The inner store's lock (a Redis lock spans processes), or this process's when it fails."""
        with contextlib.ExitStack() as stack:
            def enter():
                stack.enter_context(self.inner.lock(key))
                return True

            if not self._call("lock", enter, lambda: False):
                stack.enter_context(super().lock(key))
            yield


class RaisingStore(ContextStore):
    """``guard.inner`` for operations that must not degrade (a registered context's record): every
    call goes to the inner store, even during a backoff, and a failure raises
    :class:`StoreUnavailableError` as it would without the guard; the guard counts it (operation
    ``PREFIX_get``, ``PREFIX_put``, ``PREFIX_delete``, ``PREFIX_contains``, ``PREFIX_ping``) and
    records the outage, and a success ends one."""

    def __init__(self, guard: GuardedStore, prefix: str) -> None:
        super().__init__()
        self.guard, self.prefix = guard, prefix
        self.tier, self.stats, self.kv_scheme = guard.tier, guard.stats, guard.kv_scheme

    def _run(self, operation: str, fn: Callable[[], Any]) -> Any:
        return self.guard._raising(f"{self.prefix}_{operation}", fn)

    def ping(self) -> None:
        self._run("ping", self.guard.inner.ping)

    def lookup(self, key: str) -> tuple[StoredContext | None, str]:
        return self._run("get", lambda: self.guard.inner.lookup(key))

    def get(self, key: str) -> StoredContext | None:
        return self._run("get", lambda: self.guard.inner.get(key))

    def put(self, key: str, entry: StoredContext) -> None:
        self._run("put", lambda: self.guard.inner.put(key, entry))

    def delete(self, key: str) -> bool:
        return self._run("delete", lambda: self.guard.inner.delete(key))

    def __contains__(self, key: str) -> bool:
        return self._run("contains", lambda: key in self.guard.inner)

    def add_ref(self, target: str, holder: str) -> None:
        self._run("put", lambda: self.guard.inner.add_ref(target, holder))

    def drop_ref(self, target: str, holder: str) -> int:
        return self._run("delete", lambda: self.guard.inner.drop_ref(target, holder))

    def index_add(self, index: str, member: str) -> None:
        self._run("put", lambda: self.guard.inner.index_add(index, member))

    def index_drop(self, index: str, member: str) -> None:
        self._run("delete", lambda: self.guard.inner.index_drop(index, member))

    def index_members(self, index: str) -> set[str]:
        return self._run("get", lambda: self.guard.inner.index_members(index))

    def clear(self) -> None:
        self._run("clear", self.guard.inner.clear)

    def pin(self, key: str, until: float | None = None) -> None:
        self._run("put", lambda: self.guard.inner.pin(key, until))

    def unpin(self, key: str) -> None:
        self._run("delete", lambda: self.guard.inner.unpin(key))

    def lock(self, key: str):
        return self.guard.inner.lock(key)
