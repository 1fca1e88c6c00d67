"""``RedisStore``: prepared contexts in a Redis server, shared by every process that uses it.

Entries are the same checksummed safetensors bytes :class:`~steerc.stores.disk.DiskStore`
writes (nothing is unpickled), one Redis string per entry under ``steerc:ctx:<key>``; a
``SET`` replaces a value atomically, so a reader never sees half an entry. ``lock(key)`` is a
Redis lock (``SET NX`` with an expiry, via redis-py) taken after the process-local one:
two servers asked for the same new context prepare it once, and a holder that dies frees the
lock when it expires. Evictions are Redis's business (``maxmemory`` and its policy). Reference
marks (``add_ref``) are a Redis set per target, ``steerc:ctx:refs:<target>``, and indexes
(``index_add``) a set per index, ``steerc:ctx:index:<index>``, so every server sharing the Redis
sees them. A pin with an end time (a registration's TTL) is an ``EXPIREAT`` on the entry, so
Redis itself removes it then; a pin without one clears any expiry (``PERSIST``). Redis cannot
exempt a key from ``maxmemory`` eviction, so a pin is otherwise not enforced here (see the
README on ``maxmemory-policy``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from steerc.errors import SteercError, require
from steerc.stores.base import ContextStore, CorruptEntryError, StoredContext, StoreUnavailableError, check_key, entry_from_bytes, entry_to_bytes

__all__ = ["RedisStore", "StoreUnavailableError"]

log = logging.getLogger(__name__)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
    return urlunsplit(parts)


class RedisStore(ContextStore):
    """Entries in Redis at ``url`` (``redis://[:password@]host:port/db``); see the module doc.
    ``timeout``: seconds one Redis command may take before it fails (StoreUnavailableError)."""

    tier = "redis"

    @classmethod
    def from_spec(cls, spec: str, timeout: float) -> "RedisStore":
        """``redis://``, ``rediss://`` or ``unix://`` URLs (the registry's schemes)."""
        return cls(spec, timeout=timeout)

    def __init__(self, url: str, prefix: str = "steerc:ctx:", *, lock_seconds: float = 600.0, connect_timeout: float = 5.0,
                 timeout: float = 60.0) -> None:
        super().__init__()
        redis = require("redis", "the Redis context store", "pip install 'steerc[serve]'")
        self.url, self.prefix, self.lock_seconds = _redacted(url), prefix, lock_seconds
        try:
            # One quick retry of a dropped connection (Redis restarted), none of a timeout, no backoff:
            # an outage is the caller's to handle (GuardedStore), not a wait here.
            retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
            self.client = redis.Redis.from_url(url, socket_connect_timeout=min(connect_timeout, timeout), socket_timeout=timeout, retry=retry)
        except ValueError as exc:
            raise SteercError(f"invalid Redis URL {self.url!r}: {exc}; expected redis://host:port/db") from None
        self._oom = redis.exceptions.OutOfMemoryError  # maxmemory reached under noeviction: an outage for the writes, reads still work
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ResponseError)
        self.ping()  # fail at start-up, not on the first request

    def ping(self) -> None:
        """One Redis ``PING``."""
        self._call(self.client.ping)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._oom as exc:
            raise StoreUnavailableError(f"the Redis context store at {self.url} is out of memory ({exc}); raise its maxmemory, or let it evict: "
                                        "maxmemory-policy allkeys-lru (see the README)") from None
        except self._errors as exc:
            raise StoreUnavailableError(f"the Redis context store at {self.url} failed: {exc}; check that redis-server is running there") from None

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def get(self, key: str) -> StoredContext | None:
        data = self._call(self.client.get, self._name(key))
        if data is None:
            self.stats.misses += 1
            return None
        try:
            entry = entry_from_bytes(key, data)
        except CorruptEntryError as exc:
            log.warning("dropping unreadable stored context %s from Redis: %s", key, exc)
            self.stats.corrupt += 1
            self.stats.misses += 1
            self._call(self.client.delete, self._name(key))
            return None
        self.stats.hits += 1
        return entry

    def put(self, key: str, entry: StoredContext) -> None:
        self._call(self.client.set, self._name(key), entry_to_bytes(key, entry))
        self.stats.puts += 1

    def delete(self, key: str) -> bool:
        return bool(self._call(self.client.delete, self._name(key)))

    def _refs_name(self, target: str) -> str:
        return f"{self.prefix}refs:{check_key(target)}"

    def add_ref(self, target: str, holder: str) -> None:
        self._call(self.client.sadd, self._refs_name(target), check_key(holder))

    def drop_ref(self, target: str, holder: str) -> int:
        def srem_scard():
            pipe = self.client.pipeline(transaction=True)  # MULTI: the count is the one right after this removal
            pipe.srem(self._refs_name(target), check_key(holder))
            pipe.scard(self._refs_name(target))
            return int(pipe.execute()[1])

        return self._call(srem_scard)

    def pin(self, key: str, until: float | None = None) -> None:
        if until is None:
            self._call(self.client.persist, self._name(key))
        else:
            self._call(self.client.pexpireat, self._name(key), int(until * 1000))

    def _index_name(self, index: str) -> str:
        return f"{self.prefix}index:{check_key(index)}"

    def index_add(self, index: str, member: str) -> None:
        self._call(self.client.sadd, self._index_name(index), check_key(member))

    def index_drop(self, index: str, member: str) -> None:
        self._call(self.client.srem, self._index_name(index), member)

    def index_members(self, index: str) -> set[str]:
        return {m.decode() for m in self._call(self.client.smembers, self._index_name(index))}

    def __contains__(self, key: str) -> bool:
        return bool(self._call(self.client.exists, self._name(key)))

    def clear(self) -> None:
        """Delete this store's entries (keys under its prefix) and nothing else."""
        names = list(self._call(lambda: list(self.client.scan_iter(match=self.prefix + "*", count=500))))
        for start in range(0, len(names), 500):
            self._call(self.client.delete, *names[start : start + 500])

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        check_key(key)
        with super().lock(key):
            lock = self.client.lock(f"{self.prefix}lock:{key}", timeout=self.lock_seconds, blocking_timeout=self.lock_seconds, thread_local=False)
            acquired = self._call(lock.acquire)
            if not acquired:
                log.warning("waited %.0f s for another process to prepare context %s…; preparing it here as well", self.lock_seconds, key[:12])
            try:
                yield
            finally:
                if acquired:
                    try:
                        lock.release()
                    except Exception as exc:  # expired meanwhile (LockNotOwnedError) or Redis gone: nothing left to free
                        log.warning("could not release the Redis lock of context %s…: %s", key[:12], exc)
