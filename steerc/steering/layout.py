"""How a context-plus-query prompt splits into separately tokenized pieces.

``[head: template start + instruction prefix] [context] [tail: question + template end]``

The context is tokenized on its own, so its tokens are identical behind either prefix and
its stored KV can be reused by any later query (the pieces are joined at token level; a
joint tokenization could merge tokens across the seams). With a chat template the user
message is ``prefix + "\\n\\n" + context + "\\n\\nQuestion: " + query``; without one
(base models) the prompt is plain text ending in ``"\\nAnswer:"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerc.errors import SteercError

__all__ = ["PromptLayout", "QUESTION"]

QUESTION = "\n\nQuestion: "
_CTX, _QRY = "\x00STEERC_CONTEXT\x00", "\x00STEERC_QUERY\x00"


@dataclass(frozen=True)
class PromptLayout:
    tokenizer: object
    chat: bool

    @classmethod
    def for_tokenizer(cls, tokenizer, chat: bool = True) -> "PromptLayout":
        if tokenizer is None:
            raise SteercError("this engine has no tokenizer; text contexts need one (use token ids with steerc.steering.selection instead)")
        return cls(tokenizer, chat and bool(getattr(tokenizer, "chat_template", None)))

    def _split(self, prefix: str) -> tuple[str, str, str]:
        """(text before the context, between context and query, after the query)."""
        if self.chat:
            message = f"{prefix}\n\n{_CTX}{QUESTION}{_QRY}"
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False)
        else:
            text = f"{prefix}\n\n{_CTX}{QUESTION}{_QRY}\nAnswer:"
        head, rest = text.split(_CTX)
        middle, tail = rest.split(_QRY)
        return head, middle, tail

    def _encode(self, text: str, first: bool) -> list[int]:
        # Chat templates spell out their special tokens; plain prompts get the tokenizer's BOS once.
        return list(self.tokenizer(text, add_special_tokens=first and not self.chat)["input_ids"])

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings for answers: a base model given a completion prompt goes on to invent
        the next question (or repeats ``Answer:``); a chat model ends its turn with EOS."""
        return () if self.chat else ("\n\n", "\nQuestion:", "\nAnswer:")

    def head_ids(self, prefix: str) -> np.ndarray:
        return np.asarray(self._encode(self._split(prefix)[0], first=True), np.int64)

    def context_ids(self, context: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Context tokens and each token's character range in ``context``."""
        enc = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        return np.asarray(enc["input_ids"], np.int64), [tuple(o) for o in enc["offset_mapping"]]

    def query_ids(self, prefix: str, query: str, instruction: str = "") -> np.ndarray:
        """Tokens after the context: the question (plus an optional instruction) and the template end."""
        _, middle, tail = self._split(prefix)
        text = middle + query + (f"\n{instruction}" if instruction else "") + tail
        return np.asarray(self._encode(text, first=False), np.int64)
