"""Prepare a context once, store it, reuse it for every later query.

:func:`prepare_context` is the generic part every steering method shares: the entry key
(engine, context tokens, instruction-head tokens, the method's key fields; see
:mod:`steerc.steering.keys`) and the store fill (:mod:`steerc.steering.cache_fill`: the lookup,
the per-key lock that makes concurrent preparations of one entry run once, and the write). What
is computed on a miss is the method's :meth:`~steerc.steering.methods.SteeringMethod.build`,
given a :class:`BuildJob` with the building blocks below:

* :meth:`BuildJob.plain_kv`: the plain KV of ``head + context``, from the store's plain entry
  (``method none``) or one plain prefill, which is then stored as that entry. Every method that
  steers at query time (``steer_at = decode``) starts from it, so one context's KV is computed
  once whatever methods ask for it.
* :meth:`BuildJob.dual_importance`: LLMSteer's two importance prefills (stored too, keyed by the
  prefixes and ``window`` only), whose first pass also yields the plain KV.
* :meth:`BuildJob.finish`: the KV to store (plain, or a third, steered prefill for ``steer_at``
  ``prefill``/``both``) and the :class:`~steerc.steering.prepared.PreparedContext`.
* :meth:`BuildJob.plain`: the plain entry itself (``method none``).

:func:`prepare_plain` prepares the plain context of a text: the ``none`` method, and the methods
that build on the plain KV (query, qllm, autopasta), call it. Entries are keyed so that a hit is
always the same computation; a corrupt entry is dropped by the store and recomputed. A prepared
context's KV is stored once, apart from the entries that use it (:mod:`steerc.steering.prepared`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.cache_fill import get_or_build, get_or_build_prepared
from steerc.steering.config import SteerConfig
from steerc.steering.keys import importance_key, kv_key, plain_key, store_key
from steerc.steering.method_context import MethodContext, Progress
from steerc.steering.prepared import PreparedContext, save_prepared
from steerc.steering.selection import importance_prefill
from steerc.steering.stored_kv import load_kv
from steerc.stores import ContextStore, NullStore, StoredContext

if TYPE_CHECKING:
    from steerc.steering.methods.base import SteeringMethod

__all__ = ["BuildJob", "plain_context", "prepare_context", "prepare_plain"]

log = logging.getLogger(__name__)


@dataclass
class BuildJob:
    """Everything a method's ``build`` needs to compute one entry, and the shared building blocks."""

    engine: Engine
    heads: list[np.ndarray]  # instruction heads' token ids; the stored KV is built behind heads[0]
    context_ids: np.ndarray  # [N]
    config: SteerConfig
    key: str
    highlight: np.ndarray | None  # [N] bool, or None
    base_kv: KVCache | None  # the plain KV of heads[0] + context, when the caller has it
    store: ContextStore
    chunk: int
    progress: Progress | None
    start: float = field(default_factory=time.perf_counter)

    @property
    def head(self) -> np.ndarray:
        return self.heads[0]

    def report(self, stage: str) -> Callable[[int, int], None] | None:
        progress = self.progress
        return (lambda done, total: progress(stage, done, total)) if progress else None

    def plain(self) -> PreparedContext:
        """The plain entry (``method none``): the given KV, else the store's KV entry, else one plain prefill."""
        kv = self.base_kv if self.base_kv is not None else self.stored_or_prefilled_kv()
        return plain_context(self.engine, self.head, self.context_ids, kv, time.perf_counter() - self.start)

    def plain_kv(self) -> KVCache:
        """The plain KV of ``head + context``: given, stored, or prefilled now (and stored)."""
        if self.base_kv is None:
            plain, _ = get_or_build_prepared(self.store, plain_key(self.engine, self.head, self.context_ids), self.plain)
            self.base_kv = plain.kv
        return self.base_kv

    def stored_or_prefilled_kv(self) -> KVCache:
        """The plain KV from the store's KV entry (it may outlive the plain entry, or be written
        before it), else one plain prefill (not stored here)."""
        kv, _ = load_kv(self.store, kv_key(self.engine.engine_id, self.head, self.context_ids))
        if kv is None:
            return self.prefill_plain()
        self.base_kv = kv
        return kv

    def prefill_plain(self) -> KVCache:
        """One plain prefill of ``head + context`` (not looked up, not stored)."""
        ids = np.concatenate([self.head, self.context_ids])  # [Nh + N]
        _, kv = prefill(self.engine, ids[None], np.ones((1, len(ids)), np.int64), self.engine.new_cache(1), chunk=self.chunk, progress=self.report("prefill"))
        self.base_kv = kv
        return kv

    def dual_importance(self, window: int) -> np.ndarray:
        """``importance [2, L, N]``: LLMSteer's two passes (heads summed), from or to the store;
        the first pass's KV becomes the plain KV when there is none yet."""

        def build() -> StoredContext:
            passes = []
            for i, h in enumerate(self.heads):
                imp, cache = importance_prefill(self.engine, np.concatenate([h, self.context_ids]), window=window, chunk=self.chunk,
                                                progress=self.report(f"importance pass {i + 1}/2"))
                passes.append(imp[:, :, len(h) :].sum(1))  # [L, N], heads summed
                if i == 0 and self.base_kv is None:
                    plain = plain_context(self.engine, self.head, self.context_ids, cache, time.perf_counter() - self.start)  # the analysis graph's KV equals the plain graph's
                    save_prepared(self.store, plain)
                    self.base_kv = plain.kv  # as the store gives it back
            return StoredContext({"importance": np.stack(passes)}, {"kind": "importance", "window": window})  # [2, L, N]

        entry, _ = get_or_build(self.store, importance_key(self.engine, self.heads, self.context_ids, window), build)
        return entry.tensors["importance"]

    def finish(self, selected: np.ndarray, bias: np.ndarray, importance: np.ndarray | None = None, extras: dict | None = None) -> PreparedContext:
        """The prepared context: the plain KV, or with ``steer_at`` prefill/both the KV of a steered prefill."""
        config = self.config
        if config.steer_at in ("prefill", "both") and bias.any():
            name = kv_key(self.engine.engine_id, self.head, self.context_ids, bias)
            kv, _ = load_kv(self.store, name)  # another entry's steered prefill may have made this very KV
            if kv is None:
                ids = np.concatenate([self.head, self.context_ids])
                _, kv = prefill(self.engine, ids[None], np.ones((1, len(ids)), np.int64), self.engine.new_cache(1), SteerBias(bias), chunk=self.chunk,
                                progress=self.report("steered prefill"))
        else:
            kv, name = self.plain_kv(), kv_key(self.engine.engine_id, self.head, self.context_ids)
        g, N = self.engine.geometry, len(self.context_ids)
        importance = np.zeros((0, g.num_layers, N), np.float32) if importance is None else importance
        seconds = time.perf_counter() - self.start
        meta = {"prepare_seconds": seconds, "context_tokens": N, "head_tokens": len(self.head)}
        return PreparedContext(self.key, config, self.head, self.context_ids, kv, selected, importance, bias, meta, extras or {}, kv_key=name)


def plain_context(engine: Engine, head: np.ndarray, context_ids: np.ndarray, kv: KVCache, seconds: float) -> PreparedContext:
    """The ``method none`` entry: the plain KV, nothing selected, no bias."""
    g, N, Nh = engine.geometry, len(context_ids), len(head)
    return PreparedContext(plain_key(engine, head, context_ids), SteerConfig(method="none"), head, context_ids, kv, np.ones((g.num_layers, N), bool),
                           np.zeros((0, g.num_layers, N), np.float32), np.zeros((g.num_layers, g.num_heads, Nh + N), np.float32),
                           {"prepare_seconds": seconds, "context_tokens": N, "head_tokens": Nh}, kv_key=kv_key(engine.engine_id, head, context_ids))


def prepare_context(
    engine: Engine,
    heads: list[np.ndarray],
    context_ids: np.ndarray,
    config: SteerConfig,
    *,
    method: "SteeringMethod",
    highlight: np.ndarray | None = None,
    base_kv: KVCache | None = None,
    store: ContextStore | None = None,
    chunk: int = DEFAULT_PREFILL_CHUNK,
    progress: Progress | None = None,
) -> tuple[PreparedContext, str]:
    """Return ``method``'s prepared context and where it came from: the store's tier (``"memory"``,
    ``"disk"``, ``"redis"``) for a hit, ``"miss"`` when it was computed (and stored). Concurrent
    calls for one new entry prepare it once (``store.lock``); the others wait and hit. ``heads``
    are the instruction heads' token ids (the method uses as many as it needs; the stored KV uses
    the first); ``highlight [N]`` marks emphasised tokens (pasta); ``base_kv``, the plain KV of
    ``heads[0] + context`` if the caller has it, saves the plain prefill (so does a stored plain
    context). ``store`` None: nothing is looked up or kept (a :class:`~steerc.stores.NullStore`)."""
    context_ids = np.asarray(context_ids, np.int64)
    if len(heads) < method.instruction_heads:
        raise ValueError(f"{method.name} needs {method.instruction_heads} instruction heads (one per prefix), got {len(heads)}")
    heads = [np.asarray(h, np.int64) for h in heads[: method.instruction_heads]]
    method.check_inputs(config, context_ids, highlight)
    # The highlighted tokens join the key (pasta's character ranges are in the config already).
    key = store_key(engine, heads + ([highlight.astype(np.int64)] if highlight is not None else []), context_ids, method.key_fields(config))
    store = store if store is not None else NullStore()
    return _prepare(BuildJob(engine, heads, context_ids, config, key, highlight, base_kv, store, chunk, progress), method.name, method.build)


def prepare_plain(ctx: MethodContext, context: str, config: SteerConfig, progress: Progress | None = None) -> tuple[PreparedContext, str]:
    """The plain context (``method none``) of ``context`` behind ``config``'s first prefix, from
    ``ctx.store`` or prefilled now (and stored), and its tier. ``config``'s layers and heads are
    checked against the engine before any work."""
    ids, _ = ctx.context_tokens(context)
    head = np.asarray(ctx.layout.head_ids(config.prefixes[0]), np.int64)
    job = BuildJob(ctx.engine, [head], ids, config, plain_key(ctx.engine, head, ids), None, None, ctx.store, ctx.prefill_chunk, progress)
    return _prepare(job, "none", BuildJob.plain)


def _prepare(job: BuildJob, name: str, build: Callable[[BuildJob], PreparedContext]) -> tuple[PreparedContext, str]:
    """Check the job against the engine, then the entry under ``job.key`` from the store, or built by ``build(job)`` and stored."""
    engine, head, N = job.engine, job.head, len(job.context_ids)
    engine.check_length(len(head) + N + 1, f"the context ({N} tokens behind a {len(head)}-token instruction, plus one to generate)")
    job.config.steered_pairs(engine.geometry.num_layers, engine.geometry.num_heads)  # refuse layers/heads beyond the engine before any work

    def run() -> PreparedContext:
        job.start = time.perf_counter()
        prepared = build(job)
        log.info("context %s… prepared in %.2f s (%s, %d of %d tokens selected)", job.key[:12], prepared.meta.get("prepare_seconds", 0.0), name,
                 prepared.num_selected, N)
        return prepared

    prepared, tier = get_or_build_prepared(job.store, job.key, run)
    if tier != "miss":
        log.info("context %s…: %s hit", job.key[:12], tier)
    return prepared, tier
