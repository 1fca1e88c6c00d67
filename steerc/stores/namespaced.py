"""``NamespacedStore``: one tenant's view of a shared store.

Every key (entries, KVs, reference marks, locks, pins) is mapped to ``sha256(namespace, key)``
before it reaches the store, so two namespaces never see each other's entries, and the same
context prepared by two tenants is two entries. The namespace is set by the server from the
authenticated API key, never by the client: knowing (or computing) another tenant's key or
context id gives nothing, because every lookup a tenant makes is mapped with its own namespace.
"""

from __future__ import annotations

import hashlib

from steerc.stores.base import ContextStore, StoredContext, check_key

__all__ = ["NamespacedStore", "namespaced_key"]


def namespaced_key(namespace: str, key: str) -> str:
    """The store key of ``key`` in ``namespace`` (64 hex characters, like every store key)."""
    return hashlib.sha256(f"steerc-tenant\0{namespace}\0{check_key(key)}".encode()).hexdigest()


class NamespacedStore(ContextStore):
    """``inner`` with every key mapped into ``namespace``; hits, tiers and failures are the inner store's."""

    def __init__(self, inner: ContextStore, namespace: str) -> None:
        super().__init__()
        if not namespace:
            raise ValueError("a namespace must be a non-empty string")
        self.inner, self.namespace = inner, namespace
        self.tier, self.stats, self.kv_scheme = inner.tier, inner.stats, inner.kv_scheme

    def _k(self, key: str) -> str:
        return namespaced_key(self.namespace, key)

    def lock(self, key: str):
        return self.inner.lock(self._k(key))

    def lookup(self, key: str) -> tuple[StoredContext | None, str]:
        return self.inner.lookup(self._k(key))

    def ping(self) -> None:
        self.inner.ping()

    def get(self, key: str) -> StoredContext | None:
        return self.inner.get(self._k(key))

    def put(self, key: str, entry: StoredContext) -> None:
        self.inner.put(self._k(key), entry)

    def delete(self, key: str) -> bool:
        return self.inner.delete(self._k(key))

    def __contains__(self, key: str) -> bool:
        return self._k(key) in self.inner

    def add_ref(self, target: str, holder: str) -> None:
        self.inner.add_ref(self._k(target), self._k(holder))

    def drop_ref(self, target: str, holder: str) -> int:
        return self.inner.drop_ref(self._k(target), self._k(holder))

    def index_add(self, index: str, member: str) -> None:
        """The index is this namespace's; its members are kept as given (they name this
        namespace's keys, and only this namespace can reach the index)."""
        self.inner.index_add(self._k(index), check_key(member))

    def index_drop(self, index: str, member: str) -> None:
        self.inner.index_drop(self._k(index), member)

    def index_members(self, index: str) -> set[str]:
        return self.inner.index_members(self._k(index))

    def pin(self, key: str, until: float | None = None) -> None:
        self.inner.pin(self._k(key), until)

    def unpin(self, key: str) -> None:
        self.inner.unpin(self._k(key))

    def collect_garbage(self, shared_kinds: tuple[str, ...] = ("kv",), grace_s: float = 600.0) -> dict[str, int]:
        return self.inner.collect_garbage(shared_kinds, grace_s)

    def clear(self) -> None:
        raise NotImplementedError("a tenant's view cannot clear the shared store; delete its contexts one by one")
