"""Registered documents: ``POST /v1/documents`` records, kept in the context store itself.

A document is registered once: its KV is computed alone behind the server's instruction head
and stored content-addressed (:func:`steerc.steering.documents.register_document`), and a small
record keeps its text, so a request can name it by id in ``steer.documents`` and have its KV
reused wherever it lands in the assembled context. A document id is ``doc-`` plus a hash of
its text, mapped into the tenant's namespace when there is one (so another tenant can neither
compute nor use it: 404).

The KV is one content-addressed entry (kind ``document``), and the record is one of its holders
(``store.add_ref``), as a registered context's entries hold their KV: registering the same text
again marks it once; ``DELETE`` drops the mark and deletes the KV only when nothing else holds it
(another record whose text has the same tokens). Keys are per namespace, so two tenants
registering one text hold two KVs, each deleted with its own record. Records are pinned, like every registration record, so a
registered document's KV is held by a kept entry: a store with a budget does not evict it (the
rule of a context registered with ``pin``) until its ``DELETE``, and garbage collection leaves
it. A document KV nobody holds (what an inline ``steer.documents`` text stored) is evicted by
the budget like any unheld entry. A document KV that is missing anyway (deleted behind the
server's back, evicted by Redis's ``maxmemory``, which no mark stops) is computed again on its
next use, and the mark then holds the new copy.
"""

from __future__ import annotations

import hashlib
import re
import time

from steerc.server.errors import ApiError
from steerc.steering.prepared import delete_prepared
from steerc.stores import ContextStore, StoredContext
from steerc.stores.namespaced import namespaced_key

__all__ = ["DocumentRegistry", "DOCUMENT_ID", "document_id_of"]

DOCUMENT_ID = re.compile(r"^doc-([0-9a-f]{64})$")


def document_id_of(text: str, namespace: str | None = None) -> str:
    """``doc-`` plus the sha256 of the document's text (as assembled: line endings normalised,
    trailing whitespace dropped), mapped into ``namespace`` when there is one."""
    digest = hashlib.sha256(f"steerc-document\0{text}".encode()).hexdigest()
    return f"doc-{digest if namespace is None else namespaced_key(namespace, digest)}"


def _record_key(document_id: str) -> str:
    match = DOCUMENT_ID.match(document_id)
    if not match:
        raise ApiError(404, f"unknown document id {document_id[:80]!r}: ids look like 'doc-' plus 64 hex characters, as POST /v1/documents returns them",
                       param="document_id", code="document_not_found")
    return hashlib.sha256(f"steerc-document-record\0{match.group(1)}".encode()).hexdigest()


class DocumentRegistry:
    """Document records in ``store``; ``namespace``: the tenant whose ids these are (None: shared)."""

    def __init__(self, store: ContextStore, namespace: str | None = None) -> None:
        self.store, self.namespace = store, namespace

    def save(self, text: str, tokens: int, kv_key: str) -> dict:
        """File the record of ``text`` (its KV stored under ``kv_key``), marked as a holder of that KV
        before it is written (one mark however often it is registered); registering again keeps
        its ``created``. A record that named another KV (registered behind another instruction head,
        by a server with other defaults sharing the store) lets go of that one: nothing deletes it,
        it is evictable again."""
        document_id = document_id_of(text, self.namespace)
        key = _record_key(document_id)
        old = self.store.get(key)
        record = {"kind": "document", "id": document_id, "created": old.meta["created"] if old else int(time.time()), "document": text,
                  "tokens": int(tokens), "kv_key": kv_key}
        self.store.add_ref(kv_key, key)
        self.store.put(key, StoredContext({}, record))
        self.store.pin(key)
        previous = old.meta.get("kv_key") if old else None
        if previous is not None and previous != kv_key:
            self.store.drop_ref(previous, key)
        return record

    def get(self, document_id: str, param: str = "document_id") -> dict:
        entry = self.store.get(_record_key(document_id))
        if entry is None or entry.meta.get("kind") != "document":
            raise ApiError(404, f"unknown document id {document_id!r}: it was never registered with this store, or was deleted; register it with POST /v1/documents",
                           param=param, code="document_not_found")
        return entry.meta

    def delete(self, document_id: str) -> dict:
        """Remove the record, then its mark on the document's KV, and the KV when that was its last
        holder (a later use of the text computes it again)."""
        self.get(document_id)  # 404 for an unknown id
        key = _record_key(document_id)
        delete_prepared(self.store, key)  # the record names its KV as kv_key, as a prepared context does
        self.store.unpin(key)
        return {"id": document_id, "object": "document", "deleted": True}

    def public(self, record: dict) -> dict:
        """What GET returns: the record with a preview instead of the text, and whether its KV is stored now."""
        return {"id": record["id"], "object": "document", "created": record["created"], "tokens": record["tokens"],
                "document_preview": record["document"][:200], "cached": record["kv_key"] in self.store}
