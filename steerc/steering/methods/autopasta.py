"""``autopasta``: AutoPASTA (arXiv 2409.10790), the per-query baseline LLMSteer avoids.

Once per context: the plain KV (shared with ``none``). Per query: the model first generates the
key sentence over the cached context, the sentence is matched back to a context sentence by
word F1, then PASTA steers it: a fresh steered prefill per query (``steer_at`` prefill/both, as
PASTA steers the prompt) or, with ``steer_at`` decode, the plain cached KV plus the bias. Nothing
query-dependent is stored, so a context cannot be registered for it once.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from steerc.runtime.generate import generate
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import prepare_context, prepare_plain
from steerc.steering.methods.base import QueryPlan, SteeringMethod
from steerc.steering.methods.pasta import Pasta
from steerc.steering.prepared import PreparedContext
from steerc.steering.spans import best_sentence, spans_to_token_mask
from steerc.stores import NullStore

__all__ = ["AutoPasta", "AUTOPASTA_INSTRUCTION", "KEY_SENTENCE_TOKENS"]

AUTOPASTA_INSTRUCTION = "Do not answer yet. Copy the one sentence from the passages that answers the question."
KEY_SENTENCE_TOKENS = 48


class AutoPasta(SteeringMethod):
    name = "autopasta"
    summary = "AutoPASTA: the model names the key sentence per query, then PASTA steers it (a generation and a prefill per query)"
    registrable = False
    eval_rank = 3

    def prepare(self, ctx, context: str, config: SteerConfig, progress=None) -> tuple[PreparedContext, str]:
        return prepare_plain(ctx, context, config, progress)

    def plan(self, ctx, prepared: PreparedContext, context: str, query: str, query_ids: np.ndarray, config: SteerConfig, progress=None) -> QueryPlan:
        start = time.perf_counter()
        engine, layout = ctx.engine, ctx.layout
        ask = layout.query_ids(config.prefixes[0], query, AUTOPASTA_INSTRUCTION)
        tokens = [int(t[0]) for t in generate(engine, ask[None], cache=prepared.kv, max_new_tokens=KEY_SENTENCE_TOKENS, prefill_chunk=ctx.prefill_chunk,
                                              position_offset=prepared.position_offset)]
        sentence = engine.tokenizer.decode([t for t in tokens if t not in engine.eos_token_ids], skip_special_tokens=True).strip()
        span, _score = best_sentence(sentence, context)
        ids, offsets = ctx.context_tokens(context)
        highlight = spans_to_token_mask(offsets, [span], len(context))
        steered, _ = prepare_context(engine, [prepared.head_ids], ids, config, highlight=highlight, base_kv=prepared.kv, store=NullStore(),
                                     chunk=ctx.prefill_chunk, progress=progress, method=_PASTA)
        if prepared.positions is not None:  # a compacted context: the same keys (a steered prefill re-ran the whole context)
            same = steered.kv.length == prepared.kv.length
            steered = replace(steered, positions=prepared.positions) if same else steered.compacted(prepared.positions)
        return QueryPlan(steered.kv, steered.query_steering(), steered.selected, key_sentence=context[span[0] : span[1]],
                         seconds=time.perf_counter() - start, prepared=steered)


_PASTA = Pasta()
