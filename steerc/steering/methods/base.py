"""The one interface every steering method implements.

A method is a small object with three hooks; the runtime, the server and the evaluation ask
it, and never test its name:

* **What it prepares and stores once per context**: :meth:`SteeringMethod.prepare` (the entry,
  from the store or built now) with :meth:`~SteeringMethod.build` doing the work on a miss and
  :meth:`~SteeringMethod.key_fields` saying what the entry depends on.
* **What it computes per query**: :meth:`~SteeringMethod.plan`, given the prepared context and
  the question's tokens.
* **The bias it returns**: the :class:`QueryPlan`'s ``steering`` (``[L, H, K]`` over the
  stored keys; the question prefill and every decode step apply it) and the KV the question
  attends to. The stored KV is never changed.

The hooks are given a :class:`~steerc.steering.method_context.MethodContext` (the engine, the
prompt layout, the store, the prefill chunk and the context's tokens), never the Steerer. A
method that builds on the plain context calls
:func:`~steerc.steering.contexts.prepare_plain`, not another method.

Class attributes describe the method to its callers (its own settings, ``options``: a
:class:`~steerc.steering.options.MethodOptions` dataclass; how many instruction prefixes it
prefills behind, whether a context can be registered for it once, whether the evaluation
hands it the example's evidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import BuildJob, prepare_context
from steerc.steering.keys import intermediate_keys
from steerc.steering.method_context import MethodContext, Progress
from steerc.steering.options import MethodOptions
from steerc.steering.prepared import PreparedContext
from steerc.steering.selection import steering_bias

__all__ = ["Evidence", "EvidenceDistribution", "QueryPlan", "SteeringMethod"]

# Store keys were first made when one flat config held every method's options, so every key held
# LLMSteer's top_k and PASTA's highlights; a method without them keeps those defaults in its key,
# and entries stored then still hit.
_EARLIER_KEY_FIELDS = {"top_k": 0.2, "highlights": ()}


@dataclass(frozen=True)
class Evidence:
    """A unit of the context a method chose to emphasise for one query."""

    unit: int  # 0-based index among the context's units
    kind: str  # "sentence", "paragraph" (a line of a multi-document input), "document" (of an assembled context) or "block" (qllm: a block of tokens)
    start: int  # character range in the context
    end: int
    score: float  # the unit's share of the evidence score (calibrated attention, word overlap or their rank fusion, by rank_by); qllm: its standardised block score
    preview: str  # its first words

    def describe(self) -> str:
        """One line for people: which unit, how strongly it was picked, its first words."""
        how = f"retrieval score {self.score:+.2f} (standardised over the blocks)" if self.kind == "block" else f"{self.score:.0%} of the evidence score"
        return f"{self.kind} {self.unit + 1} ({how}): {self.preview!r}"

    def to_dict(self) -> dict:
        return {"unit": self.unit, "kind": self.kind, "start": self.start, "end": self.end, "score": round(self.score, 4), "preview": self.preview}


@dataclass(frozen=True)
class EvidenceDistribution:
    """How sure a query-aware pick was, and what it applied: every unit's share of the selector's
    score and the fraction of ``log(alpha)`` its tokens got (0: emphasised, 1: fully
    down-weighted), the strongest alpha applied anywhere, whether a self-check backed off, and
    where each unit is in the context (so a reader can shade the text by share)."""

    kind: str  # "sentence", "paragraph" or "document"
    shares: tuple[float, ...]  # [U], summing to 1 (all 0: no score)
    strength: tuple[float, ...]  # [U] in [0, 1]
    alpha_applied: float  # alpha ** (largest strength): 1.0 when nothing was steered
    hedge: str  # the hedging mode
    backed_off: bool = False  # the self-check answered unsteered
    spans: tuple[tuple[int, int], ...] = ()  # [U] each unit's [start, end) character range in the context (empty: not known)

    def top(self, count: int = 3) -> list[tuple[int, float]]:
        """The ``count`` largest shares, ``(unit, share)`` best first."""
        order = sorted(range(len(self.shares)), key=lambda u: (-self.shares[u], u))[:count]
        return [(u, self.shares[u]) for u in order]

    def describe(self) -> str:
        """One line for people: the top shares and the strength applied."""
        tops = ", ".join(f"{self.kind} {u + 1} {share:.0%}" for u, share in self.top())
        how = "backed off by the self-check (answered unsteered)" if self.backed_off else (
            f"alpha applied {self.alpha_applied:.3g}" + (" (nothing steered)" if self.alpha_applied >= 1 else ""))
        return f"shares {tops}; hedge {self.hedge}, {how}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shares": [round(x, 4) for x in self.shares], "strength": [round(x, 4) for x in self.strength],
                "top": [{"unit": u, "share": round(x, 4)} for u, x in self.top()], "alpha_applied": round(self.alpha_applied, 4),
                "hedge": self.hedge, "backed_off": self.backed_off, "spans": [list(span) for span in self.spans]}


@dataclass
class QueryPlan:
    """What one query attends to: the context KV and the bias over its keys."""

    kv: KVCache = field(repr=False)  # the context KV the question is prefilled after (never modified)
    steering: SteerBias | None  # [L, H, K] bias over those keys for the question prefill and decode; None: unsteered
    selected: np.ndarray  # [L, N] bool: the context tokens emphasised for this query (all True when none are)
    evidence: tuple[Evidence, ...] = ()
    key_sentence: str | None = None  # autopasta: the sentence the model named
    seconds: float = 0.0  # per-query work before the answer's own prefill (selector prefill, key-sentence generation)
    prepared: PreparedContext | None = field(default=None, repr=False)  # the context this plan steers, when not the stored one (autopasta)
    query_ids: np.ndarray | None = None  # the question tokens still to prefill after ``kv`` (None: all of them; qllm may have read some already)
    position_offset: int | None = None  # positions ``kv`` does not hold (a compacted or cut-down KV); None: the prepared context's
    distribution: EvidenceDistribution | None = None  # query-aware methods: the evidence distribution and the strength applied
    prefilled: tuple[np.ndarray, KVCache] | None = field(default=None, repr=False)  # the question already prefilled after ``kv``
    # with ``steering`` (a self-check ran it): (last logits [1, V], the extended KV); the answer decodes from it


class SteeringMethod:
    """Base class: the ``none`` behaviour plus the shared plumbing. Subclasses set ``name`` and
    override the hooks they need."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    instruction_heads: ClassVar[int] = 1  # prefixes the preparation prefills the context behind
    registrable: ClassVar[bool] = True  # its per-context work can be prepared once (POST /v1/contexts)
    oracle: ClassVar[bool] = False  # evaluation: it takes the example's evidence as highlights
    selects_evidence: ClassVar[bool] = False  # it picks units of the context per query (reported as evidence)
    eval_rank: ClassVar[int] = 1  # evaluation order: lower first (llmsteer's analysis stores the plain KV others reuse)
    options: ClassVar[type[MethodOptions]] = MethodOptions  # its own settings (``config.options``), default band and checks

    # -- once per context ------------------------------------------------------------------------
    def key_fields(self, config: SteerConfig) -> dict:
        """What the stored entry depends on besides the engine, the context and the heads."""
        data = {**_EARLIER_KEY_FIELDS, **config.to_dict()}
        for name in ("prefixes", *config.query_fields()):
            data.pop(name)  # prefixes: keyed through their tokens; query-time settings: not stored
        return data

    def highlight(self, config: SteerConfig, offsets: list[tuple[int, int]], length: int) -> np.ndarray | None:
        """Bool ``[N]``: tokens the entry emphasises whatever the query (pasta); None otherwise."""
        return None

    def check_inputs(self, config: SteerConfig, context_ids: np.ndarray, highlight: np.ndarray | None) -> None:
        """Token-level checks before any work."""

    def prepare(self, ctx: MethodContext, context: str, config: SteerConfig, progress: Progress | None = None) -> tuple[PreparedContext, str]:
        """The prepared context, from the store or built now, and its cache tier (or ``"miss"``)."""
        ids, offsets = ctx.context_tokens(context)
        heads = [ctx.layout.head_ids(p) for p in config.prefixes[: self.instruction_heads]]
        return prepare_context(ctx.engine, heads, ids, config, highlight=self.highlight(config, offsets, len(context)), store=ctx.store,
                               chunk=ctx.prefill_chunk, progress=progress, method=self)

    def build(self, job: BuildJob) -> PreparedContext:
        """Compute the entry on a store miss (``prepare_context`` stores what this returns)."""
        raise ValueError(f"method {self.name!r} prepares a context from its text (its units are sentences or documents): use "
                         f"Steerer.prepare or get_method({self.name!r}).prepare, not the token-level prepare_context")

    def store_keys(self, ctx: MethodContext, prepared: PreparedContext, config: SteerConfig) -> list[str]:
        """Every store entry a registered context of this method uses (deleted with it)."""
        heads = [ctx.layout.head_ids(p) for p in config.prefixes[: self.instruction_heads]]
        return list(dict.fromkeys([prepared.key, *intermediate_keys(ctx.engine, heads, prepared.context_ids, config.window)]))

    # -- per query -------------------------------------------------------------------------------
    def plan(self, ctx: MethodContext, prepared: PreparedContext, context: str, query: str, query_ids: np.ndarray, config: SteerConfig,
             progress: Progress | None = None) -> QueryPlan:
        """The KV and bias the question is answered with. Default: the stored bias."""
        return QueryPlan(prepared.kv, prepared.query_steering(), prepared.selected, position_offset=prepared.position_offset)

    # -- shared helpers --------------------------------------------------------------------------
    @staticmethod
    def selection_bias(job: BuildJob, selected: np.ndarray) -> np.ndarray:
        """``[L, H, Nh + N]``: ``log(alpha)`` on the unselected context keys of the steered heads."""
        g, Nh, N = job.engine.geometry, len(job.head), len(job.context_ids)
        return steering_bias(selected, Nh, Nh + N, g.num_heads, job.config.alpha, job.config.steered_pairs(g.num_layers, g.num_heads))

    def __repr__(self) -> str:
        return f"<steering method {self.name!r}>"
