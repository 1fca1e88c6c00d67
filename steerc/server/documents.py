"""Registered documents: ``POST /v1/documents`` records, kept in the context store itself.

A document is registered once: its KV is computed alone behind the server's instruction head
and stored content-addressed (:func:`steerc.steering.documents.register_document`), and a small
record keeps its text, so a request can name it by id in ``steer.documents`` and have its KV
reused wherever it lands in the assembled context. A document id is ``doc-`` plus a hash of
its text, mapped into the tenant's namespace when there is one (so another tenant can neither
compute nor use it: 404). Records are pinned (never evicted by a budget), the KV is not: an
evicted document KV is computed again on its next use.
"""

from __future__ import annotations

import hashlib
import re
import time

from steerc.server.errors import ApiError
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
        """File the record of ``text`` (its KV stored under ``kv_key``); registering again keeps its ``created``."""
        document_id = document_id_of(text, self.namespace)
        key = _record_key(document_id)
        old = self.store.get(key)
        record = {"kind": "document", "id": document_id, "created": old.meta["created"] if old else int(time.time()), "document": text,
                  "tokens": int(tokens), "kv_key": kv_key}
        self.store.put(key, StoredContext({}, record))
        self.store.pin(key)
        return record

    def get(self, document_id: str, param: str = "document_id") -> dict:
        entry = self.store.get(_record_key(document_id))
        if entry is None or entry.meta.get("kind") != "document":
            raise ApiError(404, f"unknown document id {document_id!r}: it was never registered with this store, or was deleted; register it with POST /v1/documents",
                           param=param, code="document_not_found")
        return entry.meta

    def delete(self, document_id: str) -> dict:
        """Remove the record and the document's stored KV (a later use of the text computes it again)."""
        record = self.get(document_id)
        self.store.delete(record["kv_key"])
        self.store.delete(_record_key(document_id))
        self.store.unpin(_record_key(document_id))
        return {"id": document_id, "object": "document", "deleted": True}

    def public(self, record: dict) -> dict:
        """What GET returns: the record with a preview instead of the text, and whether its KV is stored now."""
        return {"id": record["id"], "object": "document", "created": record["created"], "tokens": record["tokens"],
                "document_preview": record["document"][:200], "cached": record["kv_key"] in self.store}
