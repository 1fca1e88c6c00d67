"""Registered contexts: ``POST /v1/contexts`` records, kept in the context store itself.

A record is a store entry with no tensors and JSON metadata (the context's text, its
steering config and statistics), so it lives wherever the prepared KV lives: in memory, on
disk, or in Redis, where every server sharing that Redis sees it. A context id is
``ctx-`` plus the prepared entry's key, so registering the same context with the same
config twice, on any server, gives the same id; the record itself is filed under a key
derived from it.

Each record's id is also a member of its registry's index (a store index, so a tenant's
index is in its namespace): ``GET /v1/contexts`` lists from it, newest first, and drops members
whose record is gone (expired in Redis, or a delete interrupted by a kill).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time

from steerc.server.errors import ApiError
from steerc.steering.prepared import PreparedContext, delete_prepared
from steerc.stores import ContextStore, StoredContext, StoreUnavailableError
from steerc.stores.namespaced import namespaced_key

__all__ = ["ContextRegistry", "context_id_of", "stored_bytes"]

log = logging.getLogger(__name__)

_ID = re.compile(r"^ctx-([0-9a-f]{64})$")
_INDEX = hashlib.sha256(b"steerc-registrations").hexdigest()  # the index of registrations (mapped per tenant by its store)
TOUCH_EVERY_S = 60.0  # a record's last_used is rewritten at most this often (each rewrite is a store write)


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


def stored_bytes(store: ContextStore, entries: list[str]) -> int:
    """Bytes that ``entries`` and the KVs they hold take in ``store`` now (each KV counted once)."""
    total, seen = 0, set()
    for key in entries:
        entry = store.get(key)
        if entry is None:
            continue
        total += entry.nbytes
        kv_key = entry.meta.get("kv_key")
        if kv_key is not None and kv_key not in seen:
            seen.add(kv_key)
            kv = store.get(kv_key)
            total += kv.nbytes if kv is not None else 0
    return total


class ContextRegistry:
    """Registration records in ``store``; ``namespace``: the tenant whose ids these are (None: shared)."""

    def __init__(self, store: ContextStore, namespace: str | None = None) -> None:
        self.store, self.namespace = store, namespace

    def save(self, prepared: PreparedContext, text: str, chat: bool, entries: list[str], stats: dict, pin: bool = False, ttl_s: int | None = None,
             nbytes: int = 0) -> dict:
        """File the registration record. The record (a few KB: the text and config) is never
        evicted from a store with a budget, so an evicted context is prepared again from it;
        ``pin``: its entries (and so their KV, which they hold) are never evicted either, until :meth:`delete`.
        ``ttl_s``: the registration expires that long after this call (registering again renews
        it): its pins end then, and its next lookup deletes it (404). ``nbytes``: what the
        context's entries and KV take in the store, as listed."""
        context_id = context_id_of(prepared.key, self.namespace)
        old = self.store.get(_record_key(context_id))
        pin = pin or bool(old and old.meta.get("pinned"))
        now = time.time()
        expires = None if ttl_s is None else round(now + ttl_s, 3)
        record = {
            "kind": "registration", "id": context_id, "created": old.meta["created"] if old else int(time.time()), "context": text, "chat": chat,
            "config": prepared.config.to_dict(), "context_tokens": len(prepared.context_ids), "head_tokens": len(prepared.head_ids),
            "selected_tokens": prepared.num_selected, "selected_per_layer": round(prepared.selected_per_layer, 2), "entries": entries, "pinned": pin, "expires": expires,
            "last_used": int(now), "bytes": int(nbytes), **stats,
        }
        self.store.put(_record_key(context_id), StoredContext({}, record))
        for key in (_record_key(context_id), *(entries if pin else ())):  # after the write: a Redis SET would clear an expiry set before it
            self.store.pin(key, expires)
        self.store.index_add(_INDEX, _ID.match(context_id).group(1))
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

    def touch(self, context_id: str, record: dict) -> None:
        """Note that a request used ``context_id`` now (``last_used``): the record is rewritten
        at most every :data:`TOUCH_EVERY_S`, and only while it is still there."""
        now = time.time()
        if now - record.get("last_used", 0) < TOUCH_EVERY_S:
            return
        key = _record_key(context_id)
        try:
            with self.store.lock(key):
                entry = self.store.get(key)
                if entry is None or entry.meta.get("kind") != "registration":
                    return  # deleted meanwhile: never write it back
                self.store.put(key, StoredContext({}, {**entry.meta, "last_used": int(now)}))
                if entry.meta.get("expires") is not None:
                    self.store.pin(key, entry.meta["expires"])  # the rewrite cleared a Redis expiry
        except StoreUnavailableError as exc:  # the request it serves goes on; only the time of use is not kept
            log.warning("could not note the use of context %s: %s", context_id, exc)

    def listing(self, limit: int, after: str | None = None) -> dict:
        """Up to ``limit`` of this registry's contexts (their :meth:`public` records), newest
        first, starting after the id ``after``; OpenAI's list shape (``has_more``, ``last_id``)."""
        records = []
        for member in self.store.index_members(_INDEX):
            context_id = f"ctx-{member}"
            entry = self.store.get(_record_key(context_id))
            if entry is None or entry.meta.get("kind") != "registration":
                self.store.index_drop(_INDEX, member)  # its record is gone (expired in Redis, or a delete cut short)
                continue
            expires = entry.meta.get("expires")
            if expires is not None and time.time() >= expires:
                self._remove(context_id, entry.meta)
                continue
            records.append(entry.meta)
        records.sort(key=lambda r: (-r["created"], r["id"]))
        start = 0
        if after is not None:
            at = [i for i, r in enumerate(records) if r["id"] == after]
            if not at:
                raise ApiError(404, f"unknown context id {after[:80]!r} in 'after': it is not one of your registered contexts (it was deleted, or expired); "
                                    "list again from the start", param="after", code="context_not_found")
            start = at[0] + 1
        page = records[start : start + limit]
        data = [self.public(r) for r in page]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
                "has_more": start + limit < len(records)}

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
        self.store.index_drop(_INDEX, _ID.match(context_id).group(1))
        return removed

    def public(self, record: dict) -> dict:
        """What GET returns: the record without the context text (a preview instead), and
        whether its prepared KV is in the store right now."""
        out = {k: v for k, v in record.items() if k not in ("context", "entries", "kind", "expires")}
        out.setdefault("last_used", record["created"])  # records written before last_used was kept
        out.setdefault("bytes", None)
        expires = record.get("expires")
        out["ttl_left_s"] = None if expires is None else max(0, round(expires - time.time()))
        out["object"] = "context"
        out["context_preview"] = record["context"][:200]
        out["cached"] = record["entries"][0] in self.store
        return out
