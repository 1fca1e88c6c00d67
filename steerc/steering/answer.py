"""Query time: answer a question over a (prepared, stored) context.

``Steerer.stream(context, query)`` yields text; ``Steerer.answer`` returns a
:class:`SteeredAnswer` with timings. The config's method (an object from
:mod:`steerc.steering.methods`) does the method-specific work through two hooks: ``prepare``
(the context's stored entry, so a reused context costs only the question's own prefill) and
``plan`` (what this question attends to: the KV and the bias over its keys). The hooks are given
the Steerer's :attr:`~Steerer.method_context` (engine, layout, store, prefill chunk, the
context's tokens), not the Steerer. Then the question is prefilled with that bias and decoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, SamplingParams, generate
from steerc.runtime.text import Detokenizer, StreamRun, stream_steps
from steerc.steering.compaction import prepare_compacted
from steerc.steering.config import SteerConfig
from steerc.steering.layout import PromptLayout
from steerc.steering.method_context import ContextTokens, MethodContext, Progress
from steerc.steering.methods import Evidence, EvidenceDistribution, QueryPlan, get_method
from steerc.steering.prepared import PreparedContext
from steerc.stores import ContextStore, NullStore

__all__ = ["SteeredAnswer", "Steerer"]


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
    prepare_s: float  # context preparation in this request (0 on a hit) plus per-query selection (query, autopasta)
    ttft_s: float  # request start to first answer token
    decode_s: float
    query_tokens: int
    key_sentence: str | None = None  # autopasta: what the model picked
    evidence: tuple[Evidence, ...] = ()  # query: the units chosen for this question
    distribution: EvidenceDistribution | None = None  # query: every unit's share and the strength applied

    @property
    def decode_tokens_per_s(self) -> float:
        return (len(self.token_ids) - 1) / self.decode_s if self.decode_s > 0 and len(self.token_ids) > 1 else 0.0


class Steerer:
    """Steered question answering over reusable contexts with one engine and one store (None:
    a :class:`~steerc.stores.NullStore`, every context prepared afresh)."""

    def __init__(self, engine: Engine, config: SteerConfig | None = None, store: ContextStore | None = None, *, chat: bool = True,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, generate_fn=generate):
        """``generate_fn``: what decodes the answer, :func:`~steerc.runtime.generate.generate` or one
        of its signature (the server's shared decode batch)."""
        self.engine, self.config, self.prefill_chunk = engine, config or SteerConfig(), prefill_chunk
        self.generate_fn = generate_fn
        self.store: ContextStore = store if store is not None else NullStore()
        self.layout = PromptLayout.for_tokenizer(engine.tokenizer, chat)
        self.last: SteeredAnswer | None = None
        self.last_context: tuple[PreparedContext, list[tuple[int, int]]] | None = None
        self.last_plan: QueryPlan | None = None
        self.context_tokens = ContextTokens(self.layout)  # context -> (ids, offsets), tokenized once per context text
        self.document_spans: tuple[tuple[int, int], ...] = ()  # a context assembled from documents: their character ranges

    @property
    def method_context(self) -> MethodContext:
        """What the method hooks are given: this Steerer's engine, layout, store, prefill chunk and context tokens."""
        return MethodContext(self.engine, self.layout, self.store, self.prefill_chunk, self.context_tokens, tuple(self.document_spans))

    def prepare(self, context: str, config: SteerConfig | None = None, progress: Progress | None = None) -> tuple[PreparedContext, str]:
        """The prepared context (from the store, or computed and stored) and its cache tier."""
        config = config or self.config
        if not context.strip():
            raise ValueError("the context is empty")
        method, ctx = get_method(config.method), self.method_context
        if config.compacts:
            prepared, tier = prepare_compacted(ctx, method, context, config, progress)
        else:
            prepared, tier = method.prepare(ctx, context, config, progress)
        self.last_context = (prepared, self.context_tokens(context)[1])
        return prepared, tier

    def stream(self, context: str, query: str, *, max_new_tokens: int = 64, sampling: SamplingParams = SamplingParams(),
               progress: Progress | None = None, stop: tuple[str, ...] = ()) -> Iterator[str]:
        """Yield the answer's text as it is generated; ``self.last`` holds the result after.
        ``stop``: strings that end the answer (on top of the layout's own)."""
        if not query.strip():
            raise ValueError("the query is empty")
        config, method = self.config, get_method(self.config.method)
        start = time.perf_counter()
        prepared, tier = self.prepare(context, config, progress)
        prepare_s = time.perf_counter() - start if tier == "miss" else 0.0
        query_ids = self.layout.query_ids(config.prefixes[0], query)
        self.engine.check_length(prepared.full_length + len(query_ids) + 1, f"the context ({prepared.full_length} tokens) plus the query ({len(query_ids)} tokens)")
        plan = method.plan(self.method_context, prepared, context, query, query_ids, config, progress)
        self.last_plan = plan
        if plan.prepared is not None:  # a per-query context (autopasta)
            tier, prepare_s = "per-query", time.perf_counter() - start
            self.last_context = (plan.prepared, self.last_context[1])
        else:
            prepare_s += plan.seconds
        text, run = Detokenizer(self.engine.tokenizer, self.layout.stop + tuple(stop)), StreamRun()
        offset = plan.position_offset if plan.position_offset is not None else (plan.prepared or prepared).position_offset
        todo = plan.query_ids if plan.query_ids is not None else query_ids
        steps = self.generate_fn(self.engine, todo[None], cache=plan.kv, steering=plan.steering, max_new_tokens=max_new_tokens, sampling=sampling,
                         prefill_chunk=self.prefill_chunk, position_offset=offset, prefilled=plan.prefilled)
        yield from stream_steps(self.engine, steps, text, run)
        selected = plan.selected
        self.last = SteeredAnswer(text.text.strip(), text.tokens, run.finish, config.method, tier, len(prepared.context_ids), int(selected.any(0).sum()),
                                  float(selected.sum(1).mean()), prepare_s, run.first - start, run.end - run.first, len(query_ids), plan.key_sentence,
                                  plan.evidence, plan.distribution)

    def answer(self, context: str, query: str, **kwargs) -> SteeredAnswer:
        for _ in self.stream(context, query, **kwargs):
            pass
        assert self.last is not None
        return self.last
