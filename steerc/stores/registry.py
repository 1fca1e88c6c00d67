"""Which store a spec names: the backing stores by URL scheme, imported only when chosen.

A store spec is ``memory``, a folder path (or ``file:///path``), or ``SCHEME://...``. Every
backing store owns its schemes here and builds itself from the spec with ``from_spec(spec,
timeout)``; :func:`steerc.stores.open_store` puts the in-memory LRU in front. A new store is one
file plus one line in :data:`BACKING_STORES`.
"""

from __future__ import annotations

from steerc.errors import SteercError
from steerc.lazy_import import import_path
from steerc.stores.base import ContextStore

__all__ = ["BACKING_STORES", "backing_store", "scheme_of"]

# scheme -> "module:Class" (a ContextStore subclass with ``from_spec``)
BACKING_STORES: dict[str, str] = {
    "file": "steerc.stores.disk:DiskStore",
    "redis": "steerc.stores.redis:RedisStore",
    "rediss": "steerc.stores.redis:RedisStore",
    "unix": "steerc.stores.redis:RedisStore",
}


def scheme_of(spec: str) -> str:
    """``redis`` for ``redis://host``; ``file`` for a plain path."""
    scheme, sep, _ = spec.partition("://")
    return scheme.lower() if sep and scheme.isidentifier() else "file"


def backing_store(spec: str, timeout: float) -> ContextStore:
    """The backing store ``spec`` names, built by the class that owns its scheme."""
    scheme = scheme_of(spec)
    target = BACKING_STORES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in BACKING_STORES)
        raise SteercError(f"unknown context store scheme {scheme!r} in {spec!r}: use 'memory', a folder path, or one of {known}")
    return import_path(target).from_spec(spec, timeout)
