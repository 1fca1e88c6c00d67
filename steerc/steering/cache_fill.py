"""Filling the context store: look up, lock, look up again, build, put.

Every entry the steering package stores is filled the same way, by :func:`get_or_build`: a hit
is returned at once; on a miss the key is locked (``store.lock``: per process, and across
processes for a shared store), looked up again (a concurrent request may have built it while
this one waited) and only then built and written. So concurrent requests for one new entry
build it once; the others wait on the key's lock, then hit. A :class:`~steerc.stores.NullStore`
never hits: every call builds.

The lookup and the write are given as a pair, so one sequence serves plain entries
(``store.lookup`` / ``store.put``: an evidence or block index, an importance) and prepared
contexts, stored in two parts (:func:`get_or_build_prepared`: ``load_prepared`` /
``save_prepared``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from steerc.steering.prepared import PreparedContext, load_prepared, save_prepared
from steerc.stores import ContextStore, StoredContext

__all__ = ["get_or_build", "get_or_build_prepared", "lookup_entry", "put_entry"]

T = TypeVar("T")
Load = Callable[[ContextStore, str], tuple[T | None, str]]  # (store, key) -> (the value or None, its tier)
Save = Callable[[ContextStore, str, T], None]  # (store, key, value)


def lookup_entry(store: ContextStore, key: str) -> tuple[StoredContext | None, str]:
    """The plain entry under ``key`` and its tier, or ``(None, "miss")``."""
    return store.lookup(key)


def put_entry(store: ContextStore, key: str, entry: StoredContext) -> None:
    store.put(key, entry)


def get_or_build(store: ContextStore, key: str, build: Callable[[], T], *, load: Load = lookup_entry, save: Save = put_entry) -> tuple[T, str]:
    """The value under ``key`` and its tier (``load``), or ``build()``'s, written (``save``), and
    ``"miss"``; concurrent callers for one new key build it once (the others wait on the key's
    lock, then hit)."""
    value, tier = load(store, key)
    if value is not None:
        return value, tier
    with store.lock(key):  # a concurrent request may be building it: wait, then look again
        value, tier = load(store, key)
        if value is not None:
            return value, tier
        value = build()
        save(store, key, value)
        return value, "miss"


def _save_prepared(store: ContextStore, key: str, prepared: PreparedContext) -> None:
    if prepared.key == key:  # a build that answers with another entry (of its own key) does not file it under this one
        save_prepared(store, prepared)


def get_or_build_prepared(store: ContextStore, key: str, build: Callable[[], PreparedContext]) -> tuple[PreparedContext, str]:
    """:func:`get_or_build` for a prepared context: its entry and its KV (``load_prepared`` /
    ``save_prepared``)."""
    return get_or_build(store, key, build, load=load_prepared, save=_save_prepared)
