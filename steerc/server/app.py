"""The FastAPI app: routes, admission, streaming, errors. ``create_app(engine, settings)``.

A generation request is admitted (or refused with 429), checked and run on a worker thread
(:mod:`steerc.server.service`), and its tokens come back through an asyncio queue: streamed
as server-sent events, or collected into one JSON response. A streaming client that goes away
cancels its generation at the next token; a non-streaming one is noticed within half a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from steerc.runtime.engine import Engine
from steerc.server.errors import ApiError, Cancelled, TimedOut, api_error, validation_message
from steerc.server.formats import EventStream, Reply, sse
from steerc.server.limits import Admission, BodyLimit, check_api_key
from steerc.server.metrics import CONTENT_TYPE, Metrics, RequestMetrics
from steerc.server.schemas import CompletionRequest, request_models
from steerc.server.service import Job, Service
from steerc.server.settings import ServerSettings
from steerc.steering.config import SteerConfig
from steerc.stores import ContextStore, open_store

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_HIT_TIERS = ("memory", "disk", "redis", "store")


def _body(model):
    """Give a route its request body type (the request models are made per app: ``request_models``)."""
    def set_type(route):
        route.__annotations__["body"] = model
        return route
    return set_type


def create_app(engine: Engine, settings: ServerSettings = ServerSettings(), store: ContextStore | None = None, steer_defaults: SteerConfig | None = None,
               steer_presets: Mapping[str, Any] | None = None) -> FastAPI:
    """``steer_defaults``: the steering config a request's ``steer`` fields override (default ``SteerConfig()``); ``steer_presets``:
    flat steering fields for any method (``steerc serve``'s flags), used when a request picks another method."""
    bodies = request_models()  # the steer schema of the methods registered now
    store = store if store is not None else open_store(settings.kv_store, settings.memory_store_bytes, settings.store_timeout_s)
    service = Service(engine, store, settings, steer_defaults, steer_presets)
    admission = Admission(settings.max_concurrency, settings.max_queue)
    metrics = Metrics(lambda: admission.waiting, lambda: admission.active)
    service.store.on_error = lambda backend, operation: metrics.store_errors.labels(backend, operation).inc()
    executor = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="steerc-gen")
    jobs: set[Job] = set()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        for job in list(jobs):  # shutting down: stop every generation at its next token
            job.cancel.set()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="steerc", summary="OpenAI-compatible server for steered steerc engines", lifespan=lifespan)
    app.state.service, app.state.metrics, app.state.admission = service, metrics, admission

    async def authorized(request: Request) -> None:
        check_api_key(settings.api_key, request.headers.get("authorization"))

    api = APIRouter(dependencies=[Depends(authorized)])

    # -- jobs --------------------------------------------------------------------------------
    async def start(work) -> Job:
        arrival = time.monotonic()
        deadline = arrival + settings.request_timeout_s
        await admission.acquire(deadline)
        job = Job(asyncio.get_running_loop(), deadline, arrival)
        jobs.add(job)

        def finished(_):
            jobs.discard(job)
            admission.release()

        asyncio.get_running_loop().run_in_executor(executor, job.run, work).add_done_callback(finished)
        return job

    async def next_item(job: Job, request: Request):
        """The worker's next item; a client that left (checked every half second, busy or
        not) cancels the job."""
        while True:
            if time.monotonic() - job.checked > 0.5:
                job.checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancel.set()
                    metrics.cancelled.labels("disconnect").inc()
                    raise Cancelled()
            try:
                return await asyncio.wait_for(job.queue.get(), 0.5)
            except TimeoutError:
                continue

    def failure(job: Job, exc: BaseException) -> ApiError:
        if isinstance(exc, TimedOut):
            metrics.cancelled.labels("timeout").inc()
        return api_error(exc, settings.request_timeout_s)

    def count_context(stats: dict) -> None:
        """One steered-context lookup: hit or miss, and the context tokens it prefilled."""
        metrics.prefill_tokens.labels("context").inc(stats["context_prefill_tokens"])
        metrics.cache.labels("hit" if stats["cache"] in _HIT_TIERS else "miss").inc()

    def record(route: str, index: int, gen) -> None:
        """Metrics of one finished answer (the request's TTFT is its first answer's)."""
        if index == 0:
            metrics.ttft.labels(route).observe(gen.ttft_s)
        metrics.tokens.inc(gen.completion_tokens)
        metrics.prefill_tokens.labels("prompt").inc(gen.prompt_prefill_tokens)
        if gen.decode_tokens_per_s > 0:
            metrics.decode_rate.observe(gen.decode_tokens_per_s)
        if gen.steer is not None:
            count_context(gen.steer)

    async def generation(request: Request, body, route: str, plans_of, chat: bool):
        reply = Reply(f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", service.model_name, chat)
        job = await start(lambda j: service.run(j, plans_of))
        if not body.stream:
            results = {}  # the text arrives whole in each "done"; deltas matter only to streams
            while (item := await next_item(job, request))[0] != "end":
                if item[0] == "done":
                    results[item[1]] = item[2]
                    record(route, item[1], item[2])
                elif item[0] == "error":
                    raise failure(job, item[1])
            return JSONResponse(reply.full([results[i] for i in sorted(results)]))
        first = await next_item(job, request)
        if first[0] == "error":
            raise failure(job, first[1])

        ended = False

        async def events():
            nonlocal ended
            results = []
            if chat:
                yield sse(reply.chunk(0, role=True))
            while (item := await job.queue.get())[0] != "end":
                if item[0] == "delta":
                    yield sse(reply.chunk(item[1], text=item[2]))
                elif item[0] == "done":
                    results.append(item[2])
                    record(route, item[1], item[2])
                    yield sse(reply.finish(item[1], item[2], results if _last(body, item[1]) else None))
                elif item[0] == "error":
                    ended = True
                    yield sse(failure(job, item[1]).body())
                    return
            if body.stream_options is not None and body.stream_options.include_usage:
                yield sse(reply.usage_chunk(results))
            ended = True
            yield "data: [DONE]\n\n"

        def closed() -> None:
            if not ended and not job.cancel.is_set():  # the client left mid-stream
                job.cancel.set()
                metrics.cancelled.labels("disconnect").inc()

        return EventStream(events(), on_close=closed)

    # -- routes ------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_name, "running": admission.active, "queued": admission.waiting}

    @app.get("/ready")
    async def ready():
        problems = await run_in_threadpool(service.not_ready)
        body = {"status": "not ready" if problems else "ready", "model": service.model_name, "store": "unavailable" if "store" in problems else "ok"}
        if problems:
            body["reason"] = "; ".join(problems.values())
        return JSONResponse(body, 503 if problems else 200)

    @api.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": started, "owned_by": "steerc",
                                            "max_model_len": engine.max_seq_len}]}

    @api.post("/v1/completions")
    @_body(bodies.completion)
    async def completions(request: Request, body):
        return await generation(request, body, "/v1/completions", lambda: service.plan_completion(body), chat=False)

    @api.post("/v1/chat/completions")
    @_body(bodies.chat)
    async def chat_completions(request: Request, body):
        return await generation(request, body, "/v1/chat/completions", lambda: service.plan_chat(body), chat=True)

    @api.post("/v1/contexts")
    @_body(bodies.context)
    async def register_context(request: Request, body):
        job = await start(lambda j: j.emit("done", 0, service.register(j, body)))
        while (item := await next_item(job, request))[0] != "end":
            if item[0] == "error":
                raise failure(job, item[1])
            result = item[2]
            count_context(result)
        return result

    @api.get("/v1/contexts/{context_id}")
    async def get_context(context_id: str):
        return await run_in_threadpool(lambda: service.registry.public(service.registry.get(context_id)))

    @api.delete("/v1/contexts/{context_id}")
    async def delete_context(context_id: str):
        return await run_in_threadpool(service.registry.delete, context_id)

    app.include_router(api)

    # -- errors ------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(Cancelled)
    async def on_cancelled(request: Request, exc: Cancelled):
        return JSONResponse(ApiError(499, "the client closed the request").body(), 499)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        if "json" not in request.headers.get("content-type", ""):
            message, param = f"send the body as a JSON object with 'Content-Type: application/json' (got {request.headers.get('content-type') or 'no content type'!r})", None
        return JSONResponse(ApiError(400, message, param=param).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.method} {request.url.path}; the API is /v1/completions, /v1/chat/completions, /v1/contexts, /v1/models, /health, /ready, /metrics",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).body(), exc.status_code)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        error = api_error(exc, settings.request_timeout_s)
        return JSONResponse(error.body(), error.status)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _last(body, index: int) -> bool:
    return index == len(body.prompts) - 1 if isinstance(body, CompletionRequest) else True
