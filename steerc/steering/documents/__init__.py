"""Documents as reusable units: each document's KV stored once, contexts assembled from them.

* :mod:`~steerc.steering.documents.cached`: a document's KV, computed alone behind the
  instruction head and stored content-addressed (``register_document``, ``document_kv``).
* :mod:`~steerc.steering.documents.assembly`: ``assemble``, the cached KVs at consecutive
  positions (keys moved by :mod:`steerc.runtime.rope_shift`) with a fraction re-prefilled.
* :mod:`~steerc.steering.documents.text`: the documents' context text, tokens and spans.
* :mod:`~steerc.steering.documents.answer`: answering over them with any steering method.
* :mod:`~steerc.steering.documents.options`: ``DocumentOptions`` (``recompute``, ``recompute_rule``), declared once.
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it, imported on first use (the CLI reads the options without loading the runtime)
_WHERE = {
    "DocumentAnswer": "answer", "answer_documents": "answer", "stream_documents": "answer",
    "AssembledContext": "assembly", "AssemblyReport": "assembly", "assemble": "assembly", "recompute_budget": "assembly",
    "recompute_counts": "assembly", "recompute_ranges": "assembly", "Ranking": "assembly", "question_ranking": "answer",
    "document_kv": "cached", "head_kv": "cached", "register_document": "cached",
    "DEFAULT_RECOMPUTE": "options", "DEFAULT_RULE": "options", "DocumentOptions": "options", "RECOMPUTE_RULES": "options",
    "DocumentTexts": "text", "document_ids": "text", "document_texts": "text",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
