"""A generation job's items as the HTTP answer: one JSON body, or server-sent events.

:func:`generate` starts a completion job and answers with the whole response, or streams
it: the first item is awaited before the stream starts, so a request that fails its checks
gets its error status, not an event. A streaming client that goes away cancels its
generation at the next token. Every finished answer is recorded in the metrics (tokens,
time to first token, decode speed, context cache hits).
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.responses import JSONResponse

from steerc.server.formats import EventStream, Reply, sse
from steerc.server.metrics import Metrics
from steerc.server.state import ServerState

__all__ = ["generate", "record_answer", "record_context", "run_one"]

_HIT_TIERS = ("memory", "disk", "redis", "store", "documents")  # documents: assembled from stored document KVs


def record_context(metrics: Metrics, stats: dict) -> None:
    """One steered-context lookup: hit or miss, and the context tokens it prefilled."""
    metrics.prefill_tokens.labels("context").inc(stats["context_prefill_tokens"])
    metrics.cache.labels("hit" if stats["cache"] in _HIT_TIERS else "miss").inc()


def record_answer(metrics: Metrics, route: str, index: int, gen) -> None:
    """Metrics of one finished answer (the request's TTFT is its first answer's)."""
    if index == 0:
        metrics.ttft.labels(route).observe(gen.ttft_s)
    metrics.tokens.inc(gen.completion_tokens)
    metrics.prefill_tokens.labels("prompt").inc(gen.prompt_prefill_tokens)
    metrics.prompt_cached_tokens.inc(gen.cached_tokens)
    if gen.decode_tokens_per_s > 0:
        metrics.decode_rate.observe(gen.decode_tokens_per_s)
    if gen.steer is not None:
        record_context(metrics, gen.steer)


async def run_one(state: ServerState, request: Request, work):
    """Run ``work(job)`` (one result, no stream: a registration) as an admitted job on a worker
    thread; its result, or its failure as the HTTP error."""
    scheduler = state.scheduler
    job = await scheduler.start(lambda j: j.emit("done", 0, work(j)))
    result = None
    while (item := await scheduler.next_item(job, request))[0] != "end":
        if item[0] == "error":
            raise scheduler.failure(item[1])
        result = item[2]
    return result


async def generate(state: ServerState, request: Request, body, route: str, plans_of, chat: bool, last: int):
    """Run ``plans_of()`` (the service's checked plans) as one job; ``last``: the index of the
    request's last answer (the chunk that ends it carries the steering statistics)."""
    scheduler, metrics = state.scheduler, state.metrics
    reply = Reply(f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", state.service.model_name, chat)
    job = await scheduler.start(lambda j: state.service.run(j, plans_of))
    if not body.stream:
        results = {}  # the text arrives whole in each "done"; deltas matter only to streams
        while (item := await scheduler.next_item(job, request))[0] != "end":
            if item[0] == "done":
                results[item[1]] = item[2]
                record_answer(metrics, route, item[1], item[2])
            elif item[0] == "error":
                raise scheduler.failure(item[1])
        return JSONResponse(reply.full([results[i] for i in sorted(results)]))
    first = await scheduler.next_item(job, request)
    if first[0] == "error":
        raise scheduler.failure(first[1])

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
                record_answer(metrics, route, item[1], item[2])
                yield sse(reply.finish(item[1], item[2], results if item[1] == last else None))
            elif item[0] == "error":
                ended = True
                yield sse(scheduler.failure(item[1]).body())
                return
        if body.stream_options is not None and body.stream_options.include_usage:
            yield sse(reply.usage_chunk(results))
        ended = True
        yield "data: [DONE]\n\n"

    def closed() -> None:
        if not ended and not job.cancel.is_set():  # the client left mid-stream
            scheduler.cancel(job, "disconnect")

    return EventStream(events(), on_close=closed)
