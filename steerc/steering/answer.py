"""Query time: answer a question over a (prepared, stored) context.

``Steerer.stream(context, query)`` yields text; ``Steerer.answer`` returns a
:class:`SteeredAnswer` with timings. For ``none``, ``llmsteer`` and ``pasta`` the context
comes from the store (or is prepared once and stored), so a reused context costs only the
query's own prefill. ``autopasta`` is the per-query baseline LLMSteer avoids: the model
first generates the key sentence (over the plain cached context), the sentence is matched
back to the context, then the context is prefilled afresh with PASTA steering on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, SamplingParams, generate
from steerc.runtime.text import Detokenizer, StreamRun, stream_steps
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import PreparedContext, Progress, prepare_context
from steerc.steering.layout import PromptLayout
from steerc.steering.spans import best_sentence, spans_to_token_mask
from steerc.stores import ContextStore

__all__ = ["SteeredAnswer", "Steerer", "AUTOPASTA_INSTRUCTION"]

AUTOPASTA_INSTRUCTION = "Do not answer yet. Copy the one sentence from the passages that answers the question."
KEY_SENTENCE_TOKENS = 48


@dataclass
class SteeredAnswer:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    method: str
    cache: str  # the store tier of a hit ("memory", "disk", "redis"), "miss" (prepared now), "per-query" (autopasta)
    context_tokens: int
    selected_tokens: int  # on at least one layer
    selected_per_layer: float
    prepare_s: float  # context preparation in this request (0 on a hit; autopasta: key-sentence generation and steered context)
    ttft_s: float  # request start to first answer token
    decode_s: float
    query_tokens: int
    key_sentence: str | None = None  # autopasta: what the model picked

    @property
    def decode_tokens_per_s(self) -> float:
        return (len(self.token_ids) - 1) / self.decode_s if self.decode_s > 0 and len(self.token_ids) > 1 else 0.0


class Steerer:
    """Steered question answering over reusable contexts with one engine and one store."""

    def __init__(self, engine: Engine, config: SteerConfig = SteerConfig(), store: ContextStore | None = None, *, chat: bool = True,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        self.engine, self.config, self.store, self.prefill_chunk = engine, config, store, prefill_chunk
        self.layout = PromptLayout.for_tokenizer(engine.tokenizer, chat)
        self.last: SteeredAnswer | None = None
        self.last_context: tuple[PreparedContext, list[tuple[int, int]]] | None = None

    def prepare(self, context: str, config: SteerConfig | None = None, progress: Progress | None = None) -> tuple[PreparedContext, str]:
        """The prepared context (from the store, or computed and stored) and its cache tier."""
        config = config or self.config
        if not context.strip():
            raise ValueError("the context is empty")
        ids, offsets = self.layout.context_ids(context)
        heads = [self.layout.head_ids(p) for p in config.prefixes]
        highlight = spans_to_token_mask(offsets, list(config.highlights), len(context)) if config.method == "pasta" else None
        prepared, tier = prepare_context(self.engine, heads, ids, config, highlight=highlight, store=self.store, chunk=self.prefill_chunk, progress=progress)
        self.last_context = (prepared, offsets)
        return prepared, tier

    def _autopasta(self, context: str, query: str, progress: Progress | None) -> tuple[PreparedContext, str]:
        plain, _ = self.prepare(context, replace(self.config, method="none"), progress)
        ask = self.layout.query_ids(self.config.prefixes[0], query, AUTOPASTA_INSTRUCTION)
        tokens = [int(t[0]) for t in generate(self.engine, ask[None], cache=plain.kv, max_new_tokens=KEY_SENTENCE_TOKENS, prefill_chunk=self.prefill_chunk)]
        tokens = [t for t in tokens if t not in self.engine.eos_token_ids]
        sentence = self.engine.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        span, _score = best_sentence(sentence, context)
        ids, offsets = self.layout.context_ids(context)
        highlight = spans_to_token_mask(offsets, [span], len(context))
        heads = [self.layout.head_ids(self.config.prefixes[0])]
        # Query-dependent steering, never stored: a fresh steered prefill per query (steer_at prefill|both, as PASTA
        # steers the prompt), or with steer_at decode the plain cached KV plus the bias at query time.
        prepared, _ = prepare_context(self.engine, heads, ids, self.config, highlight=highlight, base_kv=plain.kv, store=None,
                                      chunk=self.prefill_chunk, progress=progress)
        self.last_context = (prepared, offsets)
        return prepared, context[span[0] : span[1]]

    def stream(self, context: str, query: str, *, max_new_tokens: int = 64, sampling: SamplingParams = SamplingParams(),
               progress: Progress | None = None, stop: tuple[str, ...] = ()) -> Iterator[str]:
        """Yield the answer's text as it is generated; ``self.last`` holds the result after.
        ``stop``: strings that end the answer (on top of the layout's own)."""
        if not query.strip():
            raise ValueError("the query is empty")
        start = time.perf_counter()
        key_sentence = None
        if self.config.method == "autopasta":
            prepared, key_sentence = self._autopasta(context, query, progress)
            tier = "per-query"
        else:
            prepared, tier = self.prepare(context, progress=progress)
        prepare_s = time.perf_counter() - start if tier in ("miss", "per-query") else 0.0  # autopasta: key sentence + steered context
        query_ids = self.layout.query_ids(self.config.prefixes[0], query)
        self.engine.check_length(prepared.length + len(query_ids) + 1, f"the context ({prepared.length} tokens) plus the query ({len(query_ids)} tokens)")
        text, run = Detokenizer(self.engine.tokenizer, self.layout.stop + tuple(stop)), StreamRun()
        steps = generate(self.engine, query_ids[None], cache=prepared.kv, steering=prepared.query_steering(), max_new_tokens=max_new_tokens,
                         sampling=sampling, prefill_chunk=self.prefill_chunk)
        yield from stream_steps(self.engine, steps, text, run)
        self.last = SteeredAnswer(text.text.strip(), text.tokens, run.finish, self.config.method, tier, len(prepared.context_ids), prepared.num_selected,
                                  prepared.selected_per_layer, prepare_s, run.first - start, run.end - run.first, len(query_ids), key_sentence)

    def answer(self, context: str, query: str, **kwargs) -> SteeredAnswer:
        for _ in self.stream(context, query, **kwargs):
            pass
        assert self.last is not None
        return self.last

