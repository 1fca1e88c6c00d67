"""Every store key the steering package files entries under.

A key is the sha256 of everything that determines what is stored under it, so a hit is always
the same computation (:func:`steerc.stores.context_key` for entries, a digest of the source key
and the kept positions for a compacted KV):

* :func:`store_key`: a prepared context's entry (engine, instruction heads, context tokens and
  the method's key fields); :func:`plain_key` is the plain context's (``method none``).
* :func:`importance_key`: LLMSteer's dual-prefix importance of a context.
* :func:`kv_key`: the one stored copy of a KV (:mod:`steerc.steering.stored_kv`);
  :func:`compacted_kv_key`: a KV cut down to some of its positions; :func:`content_kv_key`: a
  KV addressed by its bytes (a prepared context built without a ``kv_key``).
* :func:`document_kv_key`: a document's KV, computed alone behind an instruction head
  (:mod:`steerc.steering.documents`); the head's own KV is :func:`kv_key` of an empty context.
* :func:`intermediate_keys`: the shared entries a context's preparation leaves behind.

Changing how any of these is derived orphans every stored entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from steerc.stores import context_key

if TYPE_CHECKING:
    from steerc.runtime.engine import Engine
    from steerc.runtime.kv_cache import KVCache

__all__ = ["store_key", "plain_key", "importance_key", "kv_key", "compacted_kv_key", "content_kv_key", "document_kv_key", "intermediate_keys"]


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()


def store_key(engine: "Engine", heads: list[np.ndarray], context_ids: np.ndarray, fields: dict) -> str:
    """The entry key of a context behind ``heads`` with the given key fields."""
    return context_key(engine.engine_id, np.asarray(context_ids).tolist(), json.dumps([np.asarray(h).tolist() for h in heads]), fields)


def plain_key(engine: "Engine", head: np.ndarray, context_ids: np.ndarray) -> str:
    """The key of the plain context (``method none``) behind ``head``."""
    return store_key(engine, [head], context_ids, {"method": "none"})


def importance_key(engine: "Engine", heads: list[np.ndarray], context_ids: np.ndarray, window: int) -> str:
    """The key of the dual-prefix importance of ``context_ids`` behind ``heads`` (two of them)."""
    return store_key(engine, heads, context_ids, {"importance": "dual-prefix", "window": window})


def kv_key(engine_id: str, head_ids: np.ndarray, context_ids: np.ndarray, prefill_bias: np.ndarray | None = None) -> str:
    """The store key of the KV of ``head + context`` prefilled by ``engine_id``, with
    ``prefill_bias [L, H, Nh + N]`` applied during the prefill (None or all zero: a plain prefill)."""
    steered = prefill_bias is not None and bool(np.any(prefill_bias))
    fields = {"kv": "prefill", "prefill_bias": _digest(np.asarray(prefill_bias, np.float32)) if steered else None}
    return context_key(engine_id, np.asarray(context_ids).tolist(), [int(t) for t in np.asarray(head_ids)], fields)


def document_kv_key(engine_id: str, head_ids: np.ndarray, document_ids: np.ndarray) -> str:
    """The store key of the KV of ``document_ids`` prefilled by ``engine_id`` right after ``head_ids``
    (its positions only, starting at ``len(head_ids)``)."""
    return context_key(engine_id, np.asarray(document_ids).tolist(), [int(t) for t in np.asarray(head_ids)], {"kv": "document"})


def compacted_kv_key(full_kv_key: str, positions: np.ndarray) -> str:
    """The key of the KV that keeps ``positions`` of the KV under ``full_kv_key``."""
    return hashlib.sha256(f"steerc-compacted-kv\0{full_kv_key}\0{_digest(np.asarray(positions, np.int64))}".encode()).hexdigest()


def content_kv_key(kv: "KVCache") -> str:
    """A content address from the KV's bytes, for a prepared context built without a ``kv_key``."""
    h = hashlib.sha256(f"steerc-kv-content\0{list(kv.keyless)}".encode())
    for a in kv.flat():
        h.update(_digest(a).encode())
    return h.hexdigest()


def intermediate_keys(engine: "Engine", heads: list[np.ndarray], context_ids: np.ndarray, window: int) -> list[str]:
    """The keys of a context's shared intermediate entries: its plain KV behind ``heads[0]``
    and (with two heads) its dual-prefix importance; deleting a context removes these too."""
    context_ids = np.asarray(context_ids, np.int64)
    keys = [plain_key(engine, np.asarray(heads[0], np.int64), context_ids)]
    if len(heads) >= 2:
        keys.append(importance_key(engine, [np.asarray(h, np.int64) for h in heads[:2]], context_ids, window))
    return keys
