"""Prometheus metrics of one server (its own registry, so apps in one process do not mix)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

__all__ = ["Metrics", "RequestMetrics", "route_label", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/contexts", "/v1/models", "/health", "/ready", "/metrics")
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


def route_label(path: str) -> str:
    """A bounded label set: context ids and unknown paths are folded."""
    if path.startswith("/v1/contexts/"):
        return "/v1/contexts/{id}"
    return path if path in _ROUTES else "other"


class Metrics:
    def __init__(self, queue_depth, in_flight, batch_rows=lambda: 0, batch_waiting=lambda: 0) -> None:
        disable_created_metrics()  # no *_created series: timestamps, not measurements
        r = self.registry = CollectorRegistry()
        self.requests = Counter("steerc_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("steerc_request_duration_seconds", "Request duration (streams: until the last byte)", ["route"], buckets=_SECONDS, registry=r)
        self.ttft = Histogram("steerc_time_to_first_token_seconds", "Request arrival to first generated token", ["route"], buckets=_SECONDS, registry=r)
        self.tokens = Counter("steerc_generated_tokens", "Generated tokens", registry=r)
        self.decode_rate = Histogram("steerc_decode_tokens_per_second", "Decode speed of each answer (after its first token)",
                                     buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.prefill_tokens = Counter("steerc_prefill_tokens", "Tokens prefilled, by kind (context preparation or prompt)", ["kind"], registry=r)
        self.prompt_cached_tokens = Counter("steerc_prompt_cached_tokens", "Plain prompt tokens whose KV the prefix cache held (not prefilled)", registry=r)
        self.cache = Counter("steerc_context_cache", "Steered-context lookups by result (hit: no context prefill)", ["result"], registry=r)
        self.store_errors = Counter("steerc_store_errors", "Context-store operations that failed (the request went on without the store), by backend and operation",
                                    ["backend", "operation"], registry=r)
        self.cancelled = Counter("steerc_cancelled_requests", "Generations stopped early, by reason", ["reason"], registry=r)
        Gauge("steerc_queue_depth", "Requests waiting for a generation slot", registry=r).set_function(queue_depth)
        Gauge("steerc_requests_in_flight", "Requests being worked on (planning, prefill or decode)", registry=r).set_function(in_flight)
        self.batch_size = Histogram("steerc_decode_batch_size", "Rows in each batched decode step (continuous batching)",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        Gauge("steerc_decode_batch_rows", "Generations in the decode batch now", registry=r).set_function(batch_rows)
        Gauge("steerc_decode_batch_waiting", "Prefilled generations waiting for a row in the decode batch", registry=r).set_function(batch_waiting)
        self.gc_removed = Counter("steerc_store_gc_removed", "What the store's garbage collector removed, by kind (temp_files, stale_marks, orphans, expired_pins)", ["kind"],
                                  registry=r)
        for kind in ("temp_files", "stale_marks", "orphans", "expired_pins"):
            self.gc_removed.labels(kind)
        for result in ("hit", "miss"):
            self.cache.labels(result)  # exported as 0 before the first lookup
        for reason in ("disconnect", "timeout"):
            self.cancelled.labels(reason)

    def watch_store(self, store) -> None:
        """Export the entries each tier of ``store`` evicted to stay within its budget (since start)."""
        tiers, inner = {}, store
        while inner is not None:  # guard -> tiered -> memory + backing
            for name in ("memory", "backing"):
                part = getattr(inner, name, None)
                if part is not None and hasattr(part, "stats"):
                    tiers[part.tier] = part
            inner = getattr(inner, "inner", None)
        gauge = Gauge("steerc_store_evicted_entries", "Entries evicted to stay within a store budget since start, by tier", ["tier"], registry=self.registry)
        for tier, part in tiers.items():
            gauge.labels(tier).set_function(lambda part=part: part.stats.evictions)

    def watch_prefix_cache(self, cache) -> None:
        """Export the plain-prompt prefix cache's size (:class:`~steerc.runtime.prefix_cache.PrefixCache`)."""
        Gauge("steerc_prefix_cache_bytes", "Bytes of prompt KV the prefix cache holds", registry=self.registry).set_function(lambda: cache.nbytes)
        Gauge("steerc_prefix_cache_entries", "Prompts the prefix cache holds", registry=self.registry).set_function(lambda: len(cache))
        Gauge("steerc_prefix_cache_evicted_entries", "Prompts evicted from the prefix cache since start", registry=self.registry).set_function(lambda: cache.evictions)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: counts every response by route and status, and times it to its last byte."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = route_label(scope.get("path", ""))
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
