"""How documents become one context: their text, tokens and spans.

Each document is tokenized on its own, with the newline that ends its line, so its tokens (and so
its stored KV) are the same in every context it joins; the context is the documents one per line,
and its tokens are the documents' tokens joined. A full prefill of the same documents prefills
exactly these tokens (``steerc eval --documents`` pairs against it). A document's own line
endings are normalised (``\\r\\n`` -> ``\\n``) and its trailing whitespace dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerc.steering.layout import PromptLayout

__all__ = ["DocumentTexts", "document_ids", "document_texts"]

Span = tuple[int, int]


@dataclass(frozen=True)
class DocumentTexts:
    """The context text of some documents, each one's character range in it (its newline
    excluded), its token ids, and every context token's character range."""

    context: str
    spans: tuple[Span, ...]
    ids: tuple[np.ndarray, ...]  # per document [n_i] int64
    offsets: tuple[Span, ...]  # per context token, in ``context``

    @property
    def context_ids(self) -> np.ndarray:
        return np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)

    def tokens(self, text: str) -> tuple[np.ndarray, list[Span]]:
        """A :class:`~steerc.steering.method_context.MethodContext`'s ``context_tokens`` for this context."""
        if text != self.context:
            raise ValueError("these document tokens belong to another context")
        return self.context_ids, list(self.offsets)


def document_texts(layout: PromptLayout, documents: list[str]) -> DocumentTexts:
    """Tokenize ``documents`` (texts) one by one; an empty list or an empty document is refused."""
    if not documents:
        raise ValueError("no documents given: give at least one")
    parts, spans, ids, offsets, at = [], [], [], [], 0
    for i, doc in enumerate(documents):
        text = doc.replace("\r\n", "\n").replace("\r", "\n").rstrip()
        if not text:
            raise ValueError(f"document {i + 1} is empty")
        line = text + "\n"
        tokens, where = layout.context_ids(line)
        ids.append(np.asarray(tokens, np.int64))
        offsets += [(s + at, e + at) for s, e in where]
        spans.append((at, at + len(text)))
        parts.append(line)
        at += len(line)
    return DocumentTexts("".join(parts), tuple(spans), tuple(ids), tuple(offsets))


def document_ids(layout: PromptLayout, text: str) -> np.ndarray:
    """One document's token ids, as every context it joins holds them (``[n]`` int64)."""
    return document_texts(layout, [text]).ids[0]
