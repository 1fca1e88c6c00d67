"""``steerc eval --documents``: every example's documents registered in the store once, before answering.

Registering them first (as a server's ``POST /v1/documents`` would) makes every assembled answer's
time to first token a *documents warm* one, and measures what the store holds: one KV per distinct
document, however many questions share it (``--doc-pool`` makes NQ's distractors repeat).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from steerc.eval.data import Example
from steerc.runtime.engine import ContextTooLongError, Engine
from steerc.steering.documents import document_ids, head_kv, register_document
from steerc.steering.layout import PromptLayout
from steerc.stores import ContextStore

__all__ = ["register_documents"]


def register_documents(engine: Engine, examples: list[Example], store: ContextStore, layout: PromptLayout, prefix: str,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Store the KV of every distinct document of ``examples`` behind ``prefix``'s head; what the store holds for them."""
    distinct: dict[str, None] = {}
    for example in examples:
        distinct.update(dict.fromkeys(example.documents))
    head = np.asarray(layout.head_ids(prefix), np.int64)
    head_kv(engine, head, store)
    keys, computed, too_long = [], 0, 0
    for i, text in enumerate(distinct):
        try:
            key, tier = register_document(engine, head, document_ids(layout, text), store)
        except ContextTooLongError:
            too_long += 1  # its examples are skipped when answered
            continue
        keys.append(key)
        computed += tier == "miss"
        if progress:
            progress(i + 1, len(distinct))
    entries = [store.get(k) for k in keys]
    return {"distinct_documents": len(distinct), "document_slots": sum(len(e.documents) for e in examples), "computed": computed,
            "held": sum(e is not None for e in entries), "too_long": too_long, "store_bytes": sum(e.nbytes for e in entries if e is not None),
            "kv_scheme": getattr(store, "kv_scheme", "engine")}
