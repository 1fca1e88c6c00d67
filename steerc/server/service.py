"""The engine side of the server: requests become checked *plans*, plans run on worker threads.

Everything here is synchronous and runs on a generation thread, never on the event loop. A
:class:`~steerc.server.scheduling.Job` is one request's link to its HTTP handler: the worker
``emit``s ``("ready",)`` once the request is checked and tokenized, then ``("delta", i, text)`` as tokens arrive,
``("done", i, Generation)`` per prompt, and ``("error", exc)`` or ``("end",)``. ``job.check()``
runs after every token and every prefill chunk: a client that left (``cancel``) or a request
past its deadline stops there.

State never mixes between requests: each plan has its own KV cache (a stored context is
read, never written to: its KV is copied into the request's row), its own steering bias,
sampler and detokenizer, and a fresh :class:`~steerc.steering.answer.Steerer`. What requests
share is the engine, the decode batch (:mod:`steerc.server.batching`: one engine call per
token for every running generation, each row with its own bias, KV and stop conditions) and
the context store, whose per-key lock makes concurrent requests for one new context wait for
a single preparation.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steerc.errors import EngineError
from steerc.runtime.engine import Engine
from steerc.runtime.generate import SamplingParams, prefill_prompt
from steerc.runtime.prefix_cache import PrefixCache
from steerc.runtime.text import TextStream, chat_ids
from steerc.server.batching import Batcher
from steerc.server.errors import ApiError
from steerc.server.documents import DOCUMENT_ID, DocumentRegistry
from steerc.server.registry import ContextRegistry, stored_bytes
from steerc.server.scheduling import Job
from steerc.server.tenants import Tenants
from steerc.server.schemas import ChatCompletionRequest, CompletionRequest, ContextRequest, SteerRequest
from steerc.server.settings import ServerSettings
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.documents import DEFAULT_RECOMPUTE, DEFAULT_RULE, DocumentTexts, document_texts, register_document, stream_documents
from steerc.steering.layout import PromptLayout
from steerc.steering.methods import METHODS, get_method
from steerc.stores import ContextStore
from steerc.stores.guarded import GuardedStore
from steerc.stores.namespaced import NamespacedStore

__all__ = ["Generation", "Service"]

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One prompt's answer and what it cost."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int  # everything the model attended to: instruction + context + question for steered prompts
    completion_tokens: int
    ttft_s: float  # request arrival to first token
    decode_tokens_per_s: float
    prompt_prefill_tokens: int  # prefilled in this request (a steered prompt: the question only)
    steer: dict | None = None
    cached_tokens: int = 0  # a plain prompt's first tokens whose KV the prefix cache held (not prefilled again)


@dataclass
class _Prefilled:
    """Counts context tokens prefilled (per preparation stage) and checks the job between chunks."""

    job: Job
    stages: dict[str, int] = field(default_factory=dict)

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.stages[stage] = done
        self.job.check()

    @property
    def tokens(self) -> int:
        return sum(self.stages.values())


@dataclass
class Plan:
    """A checked prompt: ``ids`` for a plain one, or ``context`` + ``config`` + ``query`` for a steered one."""

    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    prompt_tokens: int
    ids: np.ndarray | None = None  # [S]
    context: str | None = None
    config: SteerConfig | None = None
    query: str | None = None
    context_id: str | None = None
    documents: list[str] | None = None  # a context assembled from these documents' stored KVs (``context`` is their text)
    recompute: float | None = None
    recompute_rule: str | None = None
    tenant: str | None = None  # whose store namespace a steered plan uses (None: the shared store); a plain plan: whose prefix cache
    cached_tokens: int = 0  # a plain plan: prompt tokens the prefix cache held
    result: Generation | None = None  # set once the plan has run


class Service:
    def __init__(self, engine: Engine, store: ContextStore, settings: ServerSettings, steer_defaults: SteerConfig | None = None,
                 steer_presets: Mapping[str, Any] | None = None) -> None:
        if engine.tokenizer is None:
            raise EngineError(f"engine {engine.folder} has no tokenizer; the server speaks text, so compile from a model folder or GGUF that has one")
        self.engine, self.settings = engine, settings
        self.store = store if isinstance(store, GuardedStore) else GuardedStore(store)  # answers degrade, not fail, when the store does
        self.steer_defaults = steer_defaults or SteerConfig()
        self.steer_presets = dict(steer_presets or {})  # flat steering fields for any method a request picks (steerc serve's flags)
        self.layout = PromptLayout.for_tokenizer(engine.tokenizer, settings.chat)
        self.registry = ContextRegistry(self.store.raising("registry"))  # a registered context's record lives only in the store: no degrading (failures counted)
        self.tenants = Tenants()  # who a request is (set by ServerState.open from the settings)
        self._views: dict[str, tuple[ContextStore, ContextRegistry]] = {}
        self._documents: dict[str | None, DocumentRegistry] = {}
        self.prefill_rate: float | None = None  # context tokens/s of the last full context prefill (what assembling documents saves is reckoned at it)
        self.model_name = settings.model_name or Path(engine.folder).name
        self.batcher = Batcher(engine, settings.max_batch)
        self.prefix_cache = PrefixCache(settings.prefix_cache_bytes)  # plain prompts' KV, reused by prompts that start the same way
        self.janitor = None  # the store's garbage collector (steerc.server.janitor), set by ServerState.open

    def close(self) -> None:
        """Stop the decode loop and the garbage collector (the server is shutting down)."""
        self.batcher.stop()
        if self.janitor is not None:
            self.janitor.stop()

    def _generate_fn(self, job: Job):
        """The job's token generator: its rows decode in the shared batch; ``job.check`` runs while they wait."""
        return functools.partial(self.batcher.generate, check=job.check)

    def view(self, tenant: str | None) -> tuple[ContextStore, ContextRegistry]:
        """The store and registry a tenant's requests use: the shared ones, or the tenant's
        namespace of them (:class:`~steerc.stores.namespaced.NamespacedStore`)."""
        namespace = self.tenants.namespace(tenant)
        if namespace is None:
            return self.store, self.registry
        if namespace not in self._views:
            self._views[namespace] = (NamespacedStore(self.store, namespace),
                                      ContextRegistry(NamespacedStore(self.store.raising("registry"), namespace), namespace))
        return self._views[namespace]

    def documents(self, tenant: str | None) -> DocumentRegistry:
        """The document records a tenant's requests use (its namespace, or the shared one)."""
        namespace = self.tenants.namespace(tenant)
        if namespace not in self._documents:
            store = self.store.raising("registry")
            self._documents[namespace] = DocumentRegistry(store if namespace is None else NamespacedStore(store, namespace), namespace)
        return self._documents[namespace]

    def not_ready(self) -> dict[str, str]:
        """What keeps the server from answering well, by part (``engine``, ``store``); empty when ready."""
        problems = {}
        if getattr(self.engine, "session", None) is None:
            problems["engine"] = "the engine is not loaded"
        problem = self.store.readiness()  # during a store's backoff: its last error, without waiting on it
        if problem is not None:
            problems["store"] = problem
        return problems

    # -- checks -----------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {self.model_name!r} (GET /v1/models)", param="model", code="model_not_found")

    def _config(self, overrides: dict, base: SteerConfig | None = None) -> SteerConfig:
        try:
            return (base or self.steer_defaults).merged(overrides, self.steer_presets)
        except ValueError as exc:
            raise ApiError(400, f"steer: {exc}", param="steer") from None

    def _room(self, used: int, max_tokens: int | None, parts: str) -> int:
        """``max_tokens`` (or all the room left when None), refused when it does not fit."""
        limit = self.engine.max_seq_len
        if max_tokens is None:
            max_tokens = limit - used
        if used + max_tokens > limit or max_tokens < 1:
            raise ApiError(400, f"this engine allows at most {limit} tokens, but the request needs {used + max(max_tokens, 1)} ({parts} + {max(max_tokens, 1)} to generate); "
                                "shorten the input or lower max_tokens (or recompile with a larger --max-seq-len)", param="max_tokens", code="context_length_exceeded")
        return max_tokens

    def _sampling(self, req) -> SamplingParams:
        seed = None if req.seed is None else req.seed % (1 << 64)  # any integer, as OpenAI takes it; numpy's generator wants 0 .. 2**64-1
        return SamplingParams(temperature=float(req.temperature), top_p=float(req.top_p), seed=seed)

    def _steered(self, steer: SteerRequest, query: str, max_tokens: int | None, req, tenant: str | None) -> Plan:
        if not query.strip():
            raise ApiError(400, "the question is empty", param="prompt")
        context_id, base, documents, context = None, None, None, None
        if steer.documents is not None:
            documents, assembled = self._document_texts(steer.documents, tenant)
            text, context = assembled.context, len(assembled.context_ids)  # the tokens assembly will place (each document tokenized alone)
        elif steer.context_id is not None:
            registry = self.view(tenant)[1]
            record = registry.get(steer.context_id)
            registry.touch(steer.context_id, record)
            context_id, text, base = steer.context_id, record["context"], SteerConfig.from_dict(record["config"])
        else:
            text = steer.context
        if not text.strip():
            raise ApiError(400, "steer.context is empty", param="steer.context")
        config = self._config(steer.overrides(), base)
        head = len(self.layout.head_ids(config.prefixes[0]))
        if context is None:
            context = len(self.layout.context_ids(text)[0])
        question = len(self.layout.query_ids(config.prefixes[0], query))
        used = head + context + question
        room = self._room(used, max_tokens, f"{head} instruction + {context} context + {question} question")
        return Plan(room, self._sampling(req), self.layout.stop + req.stops, used, context=text, config=config, query=query, context_id=context_id,
                    documents=documents, recompute=None if documents is None else (DEFAULT_RECOMPUTE if steer.recompute is None else steer.recompute),
                    recompute_rule=None if documents is None else (DEFAULT_RULE if steer.recompute_rule is None else steer.recompute_rule), tenant=tenant)

    def _document_texts(self, items: list[str], tenant: str | None) -> tuple[list[str], DocumentTexts]:
        """``steer.documents`` as texts (a registered id's text, an inline text as it is) and as
        the context they make, tokenized once here; an empty document is refused before the request is admitted."""
        registry = self.documents(tenant)
        texts = [registry.get(item, "steer.documents")["document"] if DOCUMENT_ID.match(item) else item for item in items]
        try:
            return texts, document_texts(self.layout, texts)
        except ValueError as exc:
            raise ApiError(400, f"steer.documents: {exc}", param="steer.documents") from None

    def plan_completion(self, req: CompletionRequest, tenant: str | None = None) -> list[Plan]:
        self.check_model(req.model)
        if req.steer is not None:
            return [self._steered(req.steer, p, req.max_tokens, req, tenant) for p in req.prompts]
        plans = []
        for i, prompt in enumerate(req.prompts):
            ids = np.asarray(self.engine.tokenizer(prompt)["input_ids"], np.int64)
            room = self._room(len(ids), req.max_tokens, f"{len(ids)} in prompt {i + 1}")
            plans.append(Plan(room, self._sampling(req), req.stops, len(ids), ids=ids, tenant=tenant))
        return plans

    def plan_chat(self, req: ChatCompletionRequest, tenant: str | None = None) -> list[Plan]:
        self.check_model(req.model)
        if req.steer is not None:
            if len(req.messages) != 1 or req.messages[0].role != "user":
                raise ApiError(400, "with steer, messages must be one user message: the question asked over the context (the context's instruction prefix "
                                    "takes the system prompt's place; set it with steer.prefixes)", param="messages")
            return [self._steered(req.steer, req.messages[0].text, req.token_limit, req, tenant)]
        if not self.layout.chat:
            raise ApiError(400, "this engine has no chat template (or the server runs with --no-chat); use /v1/completions", code="chat_unsupported")
        ids = np.asarray(chat_ids(self.engine.tokenizer, [{"role": m.role, "content": m.text} for m in req.messages]), np.int64)
        room = self._room(len(ids), req.token_limit, f"{len(ids)} in the messages")
        return [Plan(room, self._sampling(req), req.stops, len(ids), ids=ids, tenant=tenant)]

    # -- running ----------------------------------------------------------------------------
    def run(self, job: Job, plans_of) -> None:
        """Worker body for a completion: plan, signal ready, stream every prompt."""
        plans = plans_of()
        job.emit("ready")
        for i, plan in enumerate(plans):
            stream = self._stream_steered if plan.context is not None else self._stream_plain
            for delta in stream(plan, job):
                job.emit("delta", i, delta)
            job.emit("done", i, plan.result)

    def _plain_generate_fn(self, plan: Plan, job: Job):
        """The job's token generator for a plain prompt: the longest prefix the prefix cache holds
        (of this tenant's prompts) is not prefilled again, and the prompt's KV is kept for later ones."""
        if not self.prefix_cache.enabled:
            return self._generate_fn(job)
        scope = self.tenants.namespace(plan.tenant)

        def generate(engine, input_ids, attention_mask, *, prefill_chunk, progress, **options):
            row = input_ids[0]
            hit = self.prefix_cache.lookup(row, scope)
            reused = hit.tokens if hit is not None else 0
            past, new = (hit.kv if hit is not None else None), input_ids[:, reused:]  # [1, S - reused]
            logits, cache, _ = prefill_prompt(engine, new, None, past, None, prefill_chunk=prefill_chunk, progress=progress)
            self.prefix_cache.put(row, cache, scope)  # kept as is: the decode batch copies a row's KV in and never writes to it
            plan.cached_tokens = reused
            yield from self.batcher.generate(engine, new, None, cache=past, prefilled=(logits, cache), prefill_chunk=prefill_chunk,
                                             check=job.check, **options)

        return generate

    def _stream_plain(self, plan: Plan, job: Job) -> Iterator[str]:
        start = time.perf_counter()
        stream, parts = TextStream(self.engine, prompt_ids=plan.ids, max_new_tokens=plan.max_tokens, sampling=plan.sampling, stop=plan.stop,
                                   progress=lambda done, total: job.check(), prefill_chunk=self.settings.prefill_chunk,
                                   generate_fn=self._plain_generate_fn(plan, job)), []
        for delta in stream:
            job.check()
            parts.append(delta)
            yield delta
        job.check()
        c = stream.completion
        plan.result = Generation("".join(parts), c.finish_reason, plan.prompt_tokens, len(c.token_ids), _since(job, start) + c.prefill_s,
                                 c.decode_tokens_per_s, plan.prompt_tokens - plan.cached_tokens, cached_tokens=plan.cached_tokens)

    def _stream_steered(self, plan: Plan, job: Job) -> Iterator[str]:
        start = time.perf_counter()
        steerer = Steerer(self.engine, plan.config, self.view(plan.tenant)[0], chat=self.settings.chat, prefill_chunk=self.settings.prefill_chunk,
                          generate_fn=self._generate_fn(job))
        prefilled, parts, assembled = _Prefilled(job), [], []
        with self.store.track() as used:
            if plan.documents is not None:
                deltas = stream_documents(steerer, plan.documents, plan.query, recompute=plan.recompute, rule=plan.recompute_rule,
                                          max_new_tokens=plan.max_tokens, sampling=plan.sampling,
                                          progress=prefilled, stop=plan.stop, result=assembled)
            else:
                deltas = steerer.stream(plan.context, plan.query, max_new_tokens=plan.max_tokens, sampling=plan.sampling, progress=prefilled, stop=plan.stop)
            for delta in deltas:
                job.check()
                parts.append(delta)
                yield delta
        job.check()
        a = steerer.last
        if a.cache == "miss" and prefilled.tokens > 0 and a.prepare_s > 0:
            self.prefill_rate = prefilled.tokens / a.prepare_s
        steer = {"context_id": plan.context_id, "method": a.method, "cache": a.cache, "store": used.state, "context_tokens": a.context_tokens, "selected_tokens": a.selected_tokens,
                 "context_prefill_tokens": prefilled.tokens, "prepare_s": round(a.prepare_s, 4),
                 "config": {k: v for k, v in plan.config.to_dict().items() if k != "prefixes"}}
        if assembled and assembled[0].report is not None:
            report = assembled[0].report
            steer["context_prefill_tokens"] = report.recomputed_tokens + report.computed_tokens  # what was prefilled to assemble it
            steer["documents"] = {**report.to_dict(), "recompute": plan.recompute,
                                  "time_saved_s": None if self.prefill_rate is None else round(report.saved_s(self.prefill_rate), 4)}
        if a.key_sentence is not None:
            steer["key_sentence"] = a.key_sentence
        steer["evidence"] = [e.to_dict() for e in a.evidence]
        if a.distribution is not None:  # query: every unit's share, the strength applied, whether the pick was hedged or backed off
            steer["distribution"] = a.distribution.to_dict()
        plan.result = Generation("".join(parts), a.finish_reason, plan.prompt_tokens, len(a.token_ids), _since(job, start) + a.ttft_s, a.decode_tokens_per_s,
                                 a.query_tokens, steer)

    def register(self, job: Job, req: ContextRequest, tenant: str | None = None) -> dict:
        """Prepare (or find) a steered context and file its registration record."""
        self.check_model(req.model)
        config = self._config(req.overrides())
        method = get_method(config.method)
        if not method.registrable:
            raise ApiError(400, f"{config.method} does all its steering per question, so there is nothing to prepare once; register the context with "
                                f"another method ({', '.join(n for n, m in METHODS.items() if m.registrable)}) and send method '{config.method}' with each request", param="method")
        store, registry = self.view(tenant)
        steerer = Steerer(self.engine, config, store, chat=self.settings.chat, prefill_chunk=self.settings.prefill_chunk)
        prefilled = _Prefilled(job)
        start = time.perf_counter()
        with self.store.track() as used:
            prepared, tier = steerer.prepare(req.context, config, progress=prefilled)
        job.check()
        entries = [prepared.key] if prepared.positions is not None else method.store_keys(steerer.method_context, prepared, config)  # a compacted context is one entry
        record = registry.save(prepared, req.context, self.layout.chat, entries, {"prepare_s": round(prepared.meta.get("prepare_seconds", 0.0), 4)},
                               pin=req.pin, ttl_s=req.ttl_s, nbytes=stored_bytes(store, entries))
        out = registry.public(record)
        out.update(cache=tier, store=used.state, context_prefill_tokens=prefilled.tokens, seconds=round(time.perf_counter() - start, 4))
        return out

    def register_document(self, job: Job, req, tenant: str | None = None) -> dict:
        """Compute (or find) a document's KV behind the default instruction head and file its record."""
        self.check_model(req.model)
        try:
            texts = document_texts(self.layout, [req.document])
        except ValueError as exc:
            raise ApiError(400, f"document: {exc}", param="document") from None
        head = self.layout.head_ids(self.steer_defaults.prefixes[0])
        tokens = len(texts.ids[0])
        if len(head) + tokens >= self.engine.max_seq_len:
            raise ApiError(400, f"this engine allows at most {self.engine.max_seq_len} tokens, but the document has {tokens} (after a {len(head)}-token "
                                "instruction); split it, or recompile with a larger --max-seq-len", param="document", code="context_length_exceeded")
        start = time.perf_counter()
        with self.store.track() as used:
            kv_key, tier = register_document(self.engine, head, texts.ids[0], self.view(tenant)[0], chunk=self.settings.prefill_chunk)
        job.check()
        record = self.documents(tenant).save(texts.context[slice(*texts.spans[0])], tokens, kv_key)
        return {**self.documents(tenant).public(record), "cache": tier, "store": used.state, "seconds": round(time.perf_counter() - start, 4)}


def _since(job: Job, start_perf: float) -> float:
    """Seconds from the request's arrival to ``start_perf`` (queue wait and planning)."""
    return max(0.0, (time.monotonic() - job.arrival) - (time.perf_counter() - start_perf))
