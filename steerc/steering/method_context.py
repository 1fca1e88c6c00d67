"""What a steering method's hooks are given: :class:`MethodContext`.

A method's ``prepare``, ``plan`` and ``store_keys`` need the engine, the prompt layout (to
tokenize the instruction heads and the question), the context store, the prefill chunk size and
the context's tokens; nothing else of the :class:`~steerc.steering.answer.Steerer` that calls
them. The :class:`ContextTokens` it carries tokenizes a context text once, however many hooks
ask for its tokens.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from steerc.steering.layout import PromptLayout
from steerc.stores import ContextStore

if TYPE_CHECKING:
    from steerc.runtime.engine import Engine

__all__ = ["ContextTokens", "MethodContext", "Progress"]

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Tokens = tuple[np.ndarray, list[tuple[int, int]]]  # context ids [N] int64, each token's character range


class ContextTokens:
    """``layout.context_ids(context)``, tokenized once per context text (the last one asked for:
    a request's preparation, plan and report all ask for the same)."""

    def __init__(self, layout: PromptLayout) -> None:
        self.layout = layout
        self._last: tuple[str, Tokens] | None = None

    def __call__(self, context: str) -> Tokens:
        if self._last is None or self._last[0] != context:
            self._last = (context, self.layout.context_ids(context))
        return self._last[1]


@dataclass(frozen=True)
class MethodContext:
    """The engine, layout, store and prefill chunk a method works with, and the context's tokens
    (``context_tokens(text) -> (ids [N], offsets)``); for a context assembled from documents
    (:mod:`steerc.steering.documents`), the documents' character ranges."""

    engine: "Engine"
    layout: PromptLayout
    store: ContextStore  # a NullStore when nothing is kept
    prefill_chunk: int  # prompts are prefilled in calls of at most this many tokens (0: one call)
    context_tokens: Callable[[str], Tokens]
    document_spans: tuple[tuple[int, int], ...] = ()  # a context assembled from documents: each one's character range (query's units)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, PromptLayout):
            raise ValueError(f"layout must be a PromptLayout, got {type(self.layout).__name__}")
        if not isinstance(self.store, ContextStore):
            raise ValueError(f"store must be a ContextStore (steerc.stores.NullStore keeps nothing), got {type(self.store).__name__}")
        try:
            chunk = operator.index(self.prefill_chunk)
        except TypeError:
            chunk = -1
        if isinstance(self.prefill_chunk, bool) or chunk < 0:
            raise ValueError(f"prefill_chunk must be an integer >= 0 (0: no chunking), got {self.prefill_chunk!r}")
        if not callable(self.context_tokens):
            raise ValueError("context_tokens must be callable: context text -> (token ids, character offsets)")

    def with_store(self, store: ContextStore) -> "MethodContext":
        """The same context over another store (compaction prepares the full context in a scratch one)."""
        return replace(self, store=store)
