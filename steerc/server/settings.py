"""``ServerSettings``: how ``steerc serve`` runs (bind address, limits, auth, KV store)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from steerc.settings_base import JsonDataclass, setting
from steerc.stores import KV_SCHEMES, check_kv_scheme

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
    ``ui``: ``GET /`` serves the playground, a page that uses only the public API.

    Each field's command-line flag is declared with it (:func:`~steerc.settings_base.setting`);
    ``steerc serve`` makes its flags from them (:mod:`steerc.cli.settings_flags`)."""

    host: str = setting("127.0.0.1", "address to bind (default 127.0.0.1: this machine only)")
    port: int = setting(8000, "port to listen on")
    api_key: str | None = None  # --api-key / --api-key-file / STEERC_API_KEY (steerc.cli.serve: one of three sources)
    api_keys_file: str | None = None  # --api-keys: TENANT KEY per line (steerc.server.tenants); each tenant's contexts apart
    share_contexts: bool = setting(False, "with --api-keys: all tenants share one store namespace")
    max_concurrency: int = setting(8, "requests worked on at once: planning, context preparation, prefill and decode")
    max_queue: int = setting(32, "requests that may wait for a slot; more get 429")
    max_batch: int = setting(8, "running generations whose decode steps share one engine call (continuous batching; at most the engine's "
                                "compiled --max-batch; 1: one at a time)")
    prefill_chunk: int = setting(256, "prefill in calls of at most this many tokens, taking turns with the decode steps")
    request_timeout_s: float = setting(300.0, "seconds from arrival to last token", name="--request-timeout")
    max_body_bytes: int = setting(1 << 20, "largest request body in bytes")
    kv_store: str | None = setting(None, "prepared-context store: 'memory', a folder, or redis://host:port/db (shared by servers); "
                                         "default: memory + ~/.cache/steerc/contexts")
    memory_store_bytes: int = setting(1 << 30, "in-memory store budget (MiB)", name="--memory-store-mb", type=int, scale=1 << 20)
    kv_store_max_bytes: int | None = setting(None, "disk store budget (GiB): a write first evicts the least recently read entries; pinned "
                                                   "contexts and KVs still in use are kept (default: unbounded)", name="--kv-store-max-gb", type=float, scale=1 << 30)
    prefix_cache_bytes: int = setting(256 << 20, "memory for the KV of recent plain prompts (MiB): a prompt that starts like one of them (a system "
                                                 "prompt, a passage, earlier turns) prefills only the rest; 0 turns it off", name="--prefix-cache-mb", type=int,
                                      scale=1 << 20)
    gc_interval_s: float = setting(600.0, "seconds between runs of the store's garbage collector (it also runs at start-up)", name="--gc-interval")
    kv_store_dtype: str = setting("int8", "how stored KVs are kept: engine (as computed), fp16 (half the bytes), int8 (a quarter, one fp16 scale "
                                          "per head and position; loses no significant quality, docs/BENCHMARKS.md); the engine runs at its own dtype "
                                          "either way", choices=KV_SCHEMES)
    store_timeout_s: float = setting(10.0, "seconds a Redis command may take; past it the request is answered without the store", name="--store-timeout")
    model_name: str | None = setting(None, "the model id clients send (default: the engine folder's name)")
    chat: bool = setting(True, "do not use the chat template (base models)", negate=True)
    ui: bool = setting(True, "do not serve the playground page at / (the API is unchanged)", negate=True)

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
        _positive_int("prefix_cache_bytes", self.prefix_cache_bytes, 0)
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
