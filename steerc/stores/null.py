"""``NullStore``: a context store that keeps nothing.

Every lookup is a miss, every write is dropped and its lock is a no-op (nothing is shared, so
there is nothing to prepare once). Code that fills a store (:mod:`steerc.steering.cache_fill`)
takes one where no store was given, instead of testing for ``None`` at every step:
``Steerer(engine, config)`` prepares every context afresh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from steerc.stores.base import ContextStore, StoredContext, check_key

__all__ = ["NullStore"]


class NullStore(ContextStore):
    """Stores nothing: ``get`` misses (counted in ``stats.misses``), ``put`` drops the entry,
    ``lock`` holds nothing, ``delete`` finds nothing."""

    tier = "none"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        yield

    def get(self, key: str) -> StoredContext | None:
        self.stats.misses += 1
        return None

    def put(self, key: str, entry: StoredContext) -> None:
        check_key(key)  # a bad key is a caller's bug whatever the store

    def delete(self, key: str) -> bool:
        return False

    def add_ref(self, target: str, holder: str) -> None:
        check_key(target), check_key(holder)

    def drop_ref(self, target: str, holder: str) -> int:
        check_key(target), check_key(holder)
        return 0

    def index_add(self, index: str, member: str) -> None:
        check_key(index), check_key(member)

    def index_drop(self, index: str, member: str) -> None:
        check_key(index)

    def index_members(self, index: str) -> set[str]:
        check_key(index)
        return set()

    def __contains__(self, key: str) -> bool:
        return False

    def clear(self) -> None:
        pass
