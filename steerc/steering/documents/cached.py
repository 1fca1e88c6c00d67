"""Documents in the context store: each document's KV computed once, alone, behind the instruction head.

A document's entry holds the KV of its own positions only, as prefilled right after the head
(positions ``Nh .. Nh + n - 1``), under :func:`~steerc.steering.keys.document_kv_key` (engine,
head tokens, document tokens): one copy per distinct document whatever contexts it later joins,
content-addressed like every KV entry. The head's KV is stored once too, as the plain KV of the
head with an empty context (:func:`~steerc.steering.keys.kv_key`). Assembly
(:mod:`steerc.steering.documents.assembly`) moves a document's keys to where it lands.

Entries are of kind ``document`` (not ``kv``): a store's garbage collection removes unreferenced
``kv`` entries (a killed writer's leftovers), never a document. A document entry is
reference-counted like a context's KV: whoever keeps it names itself a holder
(``store.add_ref``: the server's document record, :mod:`steerc.server.documents`), and whoever
lets go deletes it when no holder is left (``store.drop_ref``). A budgeted disk or memory store
never evicts a held one; one nobody holds (an inline document's) stays until the budget evicts
it. A missing or evicted document is computed again when next assembled. The KV is kept at the
store's ``kv_scheme`` (:mod:`steerc.steering.kv_codec`).
"""

from __future__ import annotations

import logging

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.steering.cache_fill import get_or_build
from steerc.steering.keys import document_kv_key, kv_key
from steerc.steering.kv_codec import decode, encode
from steerc.steering.stored_kv import kv_entry, kv_from_entry, load_kv, save_kv
from steerc.stores import ContextStore, StoredContext

__all__ = ["KIND", "head_kv", "document_kv", "document_entry", "document_from_entry", "register_document"]

log = logging.getLogger(__name__)

KIND = "document"


def document_entry(kv: KVCache, start: int, scheme: str = "engine") -> StoredContext:
    """The entry of a document's KV (its positions start at ``start``, the head's length)."""
    tensors, codec = encode(list(kv.flat()), scheme)
    return StoredContext(tensors, {"kind": KIND, "length": kv.length, "start": int(start), "keyless": list(kv.keyless), "codec": codec})


def document_from_entry(key: str, entry: StoredContext, start: int) -> KVCache:
    """The KV of a document entry; ValueError when it is not one, or was computed behind another head length."""
    meta = entry.meta
    if meta.get("kind") != KIND or meta.get("start") != start:
        raise ValueError(f"store entry {key[:12]}… is not a document KV starting at position {start} (kind {meta.get('kind')!r}, start {meta.get('start')!r})")
    try:
        kv = KVCache.from_flat(decode(entry.tensors, meta.get("codec")), tuple(int(layer) for layer in meta.get("keyless", ())))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"stored document KV {key[:12]}… cannot be decoded: {exc}") from None
    if kv.length != meta.get("length"):
        raise ValueError(f"stored document KV {key[:12]}… has {kv.length} positions, its record says {meta.get('length')}")
    return kv


def head_kv(engine: Engine, head_ids: np.ndarray, store: ContextStore, chunk: int = DEFAULT_PREFILL_CHUNK) -> tuple[KVCache, str]:
    """The instruction head's KV (``[Nh]`` positions) and its tier: stored, or prefilled now and stored."""
    head_ids = np.asarray(head_ids, np.int64)

    key = kv_key(engine.engine_id, head_ids, np.zeros(0, np.int64))
    scheme = getattr(store, "kv_scheme", "engine")

    def build() -> KVCache:
        _, kv = prefill(engine, head_ids[None], np.ones((1, len(head_ids)), np.int64), engine.new_cache(1), chunk=chunk)
        return kv if scheme == "engine" else kv_from_entry(key, kv_entry(kv, scheme))  # as a later reader gets it back

    return get_or_build(store, key, build, load=load_kv, save=lambda s, k, kv: save_kv(s, k, kv))


def document_kv(engine: Engine, head_ids: np.ndarray, document_ids: np.ndarray, store: ContextStore, *, head: KVCache | None = None,
                chunk: int = DEFAULT_PREFILL_CHUNK) -> tuple[KVCache, str]:
    """A document's KV (``[n]`` positions, computed right after the head) and its tier: from the
    store, or prefilled now behind the head (``head``: its KV, when the caller has it) and stored.
    A malformed entry is dropped and recomputed."""
    head_ids, document_ids = np.asarray(head_ids, np.int64), np.asarray(document_ids, np.int64)
    if not len(document_ids):
        raise ValueError("a document needs at least one token")
    Nh, n = len(head_ids), len(document_ids)
    key = document_kv_key(engine.engine_id, head_ids, document_ids)
    scheme = getattr(store, "kv_scheme", "engine")

    def load(s: ContextStore, k: str) -> tuple[KVCache | None, str]:
        entry, tier = s.lookup(k)
        if entry is None:
            return None, "miss"
        try:
            return document_from_entry(k, entry, Nh), tier
        except ValueError as exc:
            log.warning("dropping stored document %s…: %s", k[:12], exc)
            s.delete(k)
            return None, "miss"

    def build() -> KVCache:
        engine.check_length(Nh + n + 1, f"a document of {n} tokens behind a {Nh}-token instruction (plus one to generate)")
        past = head if head is not None else head_kv(engine, head_ids, store, chunk)[0]
        _, kv = prefill(engine, document_ids[None], np.ones((1, Nh + n), np.int64), past, chunk=chunk)
        doc = kv.slice(Nh)
        if scheme != "engine":  # answer with what a later reader gets back
            return document_from_entry(key, document_entry(doc, Nh, scheme), Nh)
        return doc

    def save(s: ContextStore, k: str, kv: KVCache) -> None:
        s.put(k, document_entry(kv, Nh, scheme))

    return get_or_build(store, key, build, load=load, save=save)


def register_document(engine: Engine, head_ids: np.ndarray, document_ids: np.ndarray, store: ContextStore,
                      chunk: int = DEFAULT_PREFILL_CHUNK) -> tuple[str, str]:
    """Compute and store a document's KV unless the store has it; ``(its key, tier)`` (``"miss"``: computed now)."""
    _, tier = document_kv(engine, head_ids, document_ids, store, chunk=chunk)
    return document_kv_key(engine.engine_id, np.asarray(head_ids, np.int64), np.asarray(document_ids, np.int64)), tier
