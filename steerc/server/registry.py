"""Registered contexts: ``POST /v1/contexts`` records, kept in the context store itself.

A record is a store entry with no tensors and JSON metadata (the context's text, its
steering config and statistics), so it lives wherever the prepared KV lives: in memory, on
disk, or in Redis, where every server sharing that Redis sees it. A context id is
``ctx-`` plus the prepared entry's key, so registering the same context with the same
config twice, on any server, gives the same id; the record itself is filed under a key
derived from it.
"""

from __future__ import annotations

import hashlib
import re
import time

from steerc.server.errors import ApiError
from steerc.steering.prepared import PreparedContext, delete_prepared
from steerc.stores import ContextStore, StoredContext
from steerc.stores.namespaced import namespaced_key

__all__ = ["ContextRegistry", "context_id_of"]

_ID = re.compile(r"^ctx-([0-9a-f]{64})$")


def context_id_of(prepared_key: str, namespace: str | None = None) -> str:
    """``ctx-`` plus the prepared entry's key, mapped into ``namespace`` when there is one (so
    two tenants registering one text get two ids)."""
    return f"ctx-{prepared_key if namespace is None else namespaced_key(namespace, prepared_key)}"


def _record_key(context_id: str) -> str:
    match = _ID.match(context_id)
    if not match:
        raise ApiError(404, f"unknown context id {context_id[:80]!r}: ids look like 'ctx-' plus 64 hex characters, as POST /v1/contexts returns them",
                       param="context_id", code="context_not_found")
    return hashlib.sha256(f"steerc-registration\0{match.group(1)}".encode()).hexdigest()


class ContextRegistry:
    """Registration records in ``store``; ``namespace``: the tenant whose ids these are (None: shared)."""

    def __init__(self, store: ContextStore, namespace: str | None = None) -> None:
        self.store, self.namespace = store, namespace

    def save(self, prepared: PreparedContext, text: str, chat: bool, entries: list[str], stats: dict, pin: bool = False, ttl_s: int | None = None) -> dict:
        """File the registration record. The record (a few KB: the text and config) is never
        evicted from a store with a budget, so an evicted context is prepared again from it;
        ``pin``: its entries (and so their KV, which they hold) are never evicted either, until :meth:`delete`.
        ``ttl_s``: the registration expires that long after this call (registering again renews
        it): its pins end then, and its next lookup deletes it (404)."""
        context_id = context_id_of(prepared.key, self.namespace)
        old = self.store.get(_record_key(context_id))
        pin = pin or bool(old and old.meta.get("pinned"))
        now = time.time()
        expires = None if ttl_s is None else round(now + ttl_s, 3)
        record = {
            "kind": "registration", "id": context_id, "created": old.meta["created"] if old else int(time.time()), "context": text, "chat": chat,
            "config": prepared.config.to_dict(), "context_tokens": len(prepared.context_ids), "head_tokens": len(prepared.head_ids),
            "selected_tokens": prepared.num_selected, "selected_per_layer": round(prepared.selected_per_layer, 2), "entries": entries, "pinned": pin, "expires": expires, **stats,
        }
        for key in (_record_key(context_id), *(entries if pin else ())):
            self.store.pin(key, expires)
        self.store.put(_record_key(context_id), StoredContext({}, record))
        return record

    def get(self, context_id: str) -> dict:
        entry = self.store.get(_record_key(context_id))
        if entry is None or entry.meta.get("kind") != "registration":
            raise ApiError(404, f"unknown context id {context_id!r}: it was never registered with this store, or was deleted; register it with POST /v1/contexts",
                           param="context_id", code="context_not_found")
        expires = entry.meta.get("expires")
        if expires is not None and time.time() >= expires:
            self._remove(context_id, entry.meta)
            raise ApiError(404, f"context id {context_id!r} expired (its ttl_s ended); register it again with POST /v1/contexts",
                           param="context_id", code="context_not_found")
        return entry.meta

    def delete(self, context_id: str) -> dict:
        """Remove the record and the store entries it made (prepared context, plain context,
        importance), and their KV unless another entry still uses it."""
        removed = self._remove(context_id, self.get(context_id))
        return {"id": context_id, "object": "context", "deleted": True, "entries_removed": removed}

    def _remove(self, context_id: str, record: dict) -> int:
        removed = sum(delete_prepared(self.store, key) for key in record["entries"])
        self.store.delete(_record_key(context_id))
        for key in (_record_key(context_id), *record["entries"]):
            self.store.unpin(key)
        return removed

    def public(self, record: dict) -> dict:
        """What GET returns: the record without the context text (a preview instead), and
        whether its prepared KV is in the store right now."""
        out = {k: v for k, v in record.items() if k not in ("context", "entries", "kind", "expires")}
        expires = record.get("expires")
        out["ttl_left_s"] = None if expires is None else max(0, round(expires - time.time()))
        out["object"] = "context"
        out["context_preview"] = record["context"][:200]
        out["cached"] = record["entries"][0] in self.store
        return out
