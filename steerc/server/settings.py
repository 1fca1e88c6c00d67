"""``ServerSettings``: how ``steerc serve`` runs (bind address, limits, auth, KV store)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from steerc.settings_base import JsonDataclass
from steerc.stores import check_kv_scheme

__all__ = ["ServerSettings"]


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ServerSettings(JsonDataclass):
    """``max_concurrency`` requests are worked on at once (each on its own thread: planning,
    context preparation and prefill), up to ``max_queue`` more wait, and a request beyond that
    gets 429. Their decode steps are batched: up to ``max_batch`` running generations (at most
    the engine's compiled ``max_batch``) share one engine call per token; a request that is
    prefilled while the batch is full waits for a row. ``prefill_chunk``: prompts and contexts
    are prefilled in calls of at most this many tokens, which take turns with the decode steps,
    so a long prompt delays the running generations by one chunk at a time. ``request_timeout_s``
    bounds a request from arrival (queue wait included) to its last token. ``api_key``: when
    set, every route but ``/health`` needs ``Authorization: Bearer <key>``. ``kv_store``:
    None (memory + disk at the default folder), ``memory``, a folder, or ``redis://host:port/db``.
    ``store_timeout_s``: how long one Redis command may take before the request goes on without the store.
    ``chat``: steered prompts and ``/v1/chat/completions`` use the engine's chat template.
    ``ui``: ``GET /`` serves the playground, a page that uses only the public API."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    api_keys_file: str | None = None  # TENANT KEY per line (steerc.server.tenants); each tenant's contexts apart
    share_contexts: bool = False  # tenants share one store namespace (off: each tenant's keys are its own)
    max_concurrency: int = 8
    max_queue: int = 32
    max_batch: int = 8
    prefill_chunk: int = 256
    request_timeout_s: float = 300.0
    max_body_bytes: int = 1 << 20
    kv_store: str | None = None
    memory_store_bytes: int = 1 << 30
    kv_store_max_bytes: int | None = None  # a disk store's budget (None: unbounded); least recently read entries are evicted
    gc_interval_s: float = 600.0  # the store's garbage collector runs at start-up and this often
    kv_store_dtype: str = "int8"  # how stored KVs are kept at rest (steerc.stores.KV_SCHEMES; int8 loses no significant quality, docs/BENCHMARKS.md)
    store_timeout_s: float = 10.0
    model_name: str | None = None
    chat: bool = True
    ui: bool = True  # GET / serves the playground page (steerc/server/ui); off: --no-ui

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host must be a non-empty address, got {self.host!r}")
        _positive_int("port", self.port, 0)
        if self.port > 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8 or any(c.isspace() for c in self.api_key)):
            raise ValueError("api_key must be at least 8 characters without spaces")
        _positive_int("max_concurrency", self.max_concurrency)
        _positive_int("max_queue", self.max_queue, 0)
        _positive_int("max_batch", self.max_batch)
        _positive_int("prefill_chunk", self.prefill_chunk, 16)
        try:
            check_kv_scheme(self.kv_store_dtype)
        except ValueError as exc:
            raise ValueError(f"kv_store_dtype: {exc}") from None
        if self.kv_store_max_bytes is not None:
            _positive_int("kv_store_max_bytes", self.kv_store_max_bytes, 1 << 20)
        for name in ("request_timeout_s", "store_timeout_s", "gc_interval_s"):
            t = getattr(self, name)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {t!r}")
        _positive_int("max_body_bytes", self.max_body_bytes, 1024)
        _positive_int("memory_store_bytes", self.memory_store_bytes, 0)
        if self.kv_store is not None and (not isinstance(self.kv_store, str) or not self.kv_store.strip()):
            raise ValueError("kv_store must be 'memory', a folder, redis://host:port/db, or null for the default")
        for name in ("share_contexts", "chat", "ui"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.model_name is not None and (not isinstance(self.model_name, str) or not self.model_name.strip()):
            raise ValueError("model_name must be a non-empty string")

    def to_dict(self):
        data = super().to_dict()
        data["api_key"] = None if self.api_key is None else "***"  # never written out or logged
        return data
