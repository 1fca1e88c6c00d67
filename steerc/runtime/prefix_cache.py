"""Automatic prefix caching for plain prompts: the KV of recent prompts, reused by any later
prompt that starts with the same tokens (a shared system prompt, a passage asked about again, the
earlier turns of a conversation), as vLLM's automatic prefix caching and llama.cpp's
``cache_prompt`` do.

A prompt's KV after its prefill is kept in memory, least recently used first out, within a byte
budget. A new prompt looks for the longest common token prefix with any kept prompt (of a
``scope``: a tenant's prompts never serve another's) and prefills only what follows it. Causal
attention makes the first ``p`` positions of a cache depend on the first ``p`` tokens alone, so
a cached prefix equals the one this prompt would compute (bit for bit where the chunks the
prompt would be cut in are of two tokens or more: :data:`MIN_PREFILL_TOKENS`). Only unsteered prompts at position offset 0 use it: a steering bias or a compacted
cache changes what the same tokens' KV holds.

The cache holds :class:`~steerc.runtime.kv_cache.KVCache` arrays and never changes them; a
lookup returns a copy of the prefix (the caller's decode may write into it)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from steerc.runtime.kv_cache import KVCache

__all__ = ["PrefixCache", "PrefixHit"]

log = logging.getLogger(__name__)

# Shorter common prefixes are not worth a lookup's copy (a chat template's first few tokens match every prompt).
MIN_PREFIX_TOKENS = 16
# At least this many of a prompt's last tokens are prefilled after a cached prefix. One would
# give its logits, but a one-token call takes ONNX Runtime's decode paths, which round otherwise
# than a prompt call: the last logits of a 300-token prompt moved 0.37 on the int4 engine (its
# int8 activations amplify the difference) and 2.4e-5 on the fp32 one, enough to flip a greedy
# token, while a remainder of 2, 3 or 8 tokens gave the full prefill's logits bit for bit.
MIN_PREFILL_TOKENS = 2


@dataclass(frozen=True)
class PrefixHit:
    tokens: int  # the prompt's first ``tokens`` positions come from the cache
    kv: KVCache  # their KV (a copy), [B=1, Hkv, tokens, D] per layer


class PrefixCache:
    """The KV of recent prompts, up to ``max_bytes``; :meth:`lookup` before a prefill, :meth:`put` after."""

    def __init__(self, max_bytes: int, min_tokens: int = MIN_PREFIX_TOKENS):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise ValueError(f"min_tokens must be an integer >= 1, got {min_tokens!r}")
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[tuple, tuple[np.ndarray, KVCache]] = OrderedDict()  # (scope, ids bytes) -> (ids, kv), oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.reused_tokens = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: np.ndarray, scope: str | None = None) -> PrefixHit | None:
        """The longest cached prefix of ``ids [S]`` (at least ``min_tokens``, and at most
        ``S - MIN_PREFILL_TOKENS``: the last tokens are always prefilled, the last for its logits), or None."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if not self.enabled:
            return None
        best, best_key = 0, None
        with self._lock:
            for key, (cached, _) in self._entries.items():
                if key[0] != scope:
                    continue
                n = min(len(cached), len(ids) - MIN_PREFILL_TOKENS)  # the last tokens are prefilled: the answer starts from their logits
                if n <= best:
                    continue
                differ = np.flatnonzero(cached[:n] != ids[:n])
                common = int(differ[0]) if differ.size else n
                if common > best:
                    best, best_key = common, key
            if best < self.min_tokens:
                self.misses += 1
                return None
            self._entries.move_to_end(best_key)
            kv = self._entries[best_key][1]
            self.hits += 1
            self.reused_tokens += best
        return PrefixHit(best, kv.slice(0, best))

    def put(self, ids: np.ndarray, kv: KVCache, scope: str | None = None) -> bool:
        """Keep ``kv`` (batch 1, exactly the positions of ``ids [S]``) for later prompts; prompts
        it extends are dropped (it serves them too). False when it does not fit the budget."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if kv.batch != 1 or kv.length != len(ids):
            raise ValueError(f"put: the KV must be one row of exactly the prompt's {len(ids)} positions, got batch {kv.batch} of {kv.length}")
        size = kv.nbytes
        if not self.enabled or size > self.max_bytes or len(ids) <= self.min_tokens:
            return False
        key = (scope, ids.tobytes())
        with self._lock:
            for other, (cached, _) in self._entries.items():
                if other[0] == scope and len(cached) > len(ids) and np.array_equal(cached[:len(ids)], ids):
                    self._entries.move_to_end(other)  # a kept prompt extends this one: it serves it already
                    return True
            for other, (cached, _) in list(self._entries.items()):
                if other[0] == scope and len(cached) <= len(ids) and np.array_equal(cached, ids[:len(cached)]):
                    self._drop(other)  # a prefix of this prompt (or the same prompt): the new entry covers it
            while self._entries and self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self.evictions += 1
            self._entries[key] = (ids.copy(), kv)
            self._bytes += size
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key) -> None:
        _, kv = self._entries.pop(key)
        self._bytes -= kv.nbytes
