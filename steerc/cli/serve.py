"""``steerc serve``: the OpenAI-compatible HTTP server over an engine."""

from __future__ import annotations

import ipaddress
import os
import sys

from steerc.cli.common import DEVICES, add_backend_option, add_kv_store_dtype_option
from steerc.errors import SteercError

__all__ = ["add_serve_parser", "cmd_serve"]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _key_file(path: str) -> str:
    """The API key in ``path``: one line, read as every user file is (steerc/user_files.py)."""
    from steerc.user_files import read_text

    lines = [line.strip() for line in read_text(path, "--api-key-file").split("\n") if line.strip()]
    if len(lines) != 1:
        raise SteercError(f"--api-key-file {path} holds {len(lines)} non-empty lines; it must hold the key alone on one line")
    return lines[0]


def cmd_serve(args) -> int:
    from steerc.errors import require
    from steerc.server import ServerSettings

    require("fastapi", "steerc serve", "pip install 'steerc[serve]'")
    uvicorn = require("uvicorn", "steerc serve", "pip install 'steerc[serve]'")
    from steerc.cli.steer_options import check_profile, steer_config, steer_values
    from steerc.runtime import Engine
    from steerc.server import create_app
    from steerc.stores import default_root, open_store

    api_key = _key_file(args.api_key_file) if args.api_key_file else args.api_key or (None if args.api_keys else os.environ.get("STEERC_API_KEY")) or None
    try:
        settings = ServerSettings(host=args.host, port=args.port, api_key=api_key, api_keys_file=args.api_keys, share_contexts=args.share_contexts,
                                  max_concurrency=args.max_concurrency, max_queue=args.max_queue, max_batch=args.max_batch, prefill_chunk=args.prefill_chunk, request_timeout_s=args.request_timeout, store_timeout_s=args.store_timeout,
                                  max_body_bytes=args.max_body_bytes, kv_store=args.kv_store, memory_store_bytes=args.memory_store_mb << 20,
                                  kv_store_max_bytes=None if args.kv_store_max_gb is None else int(args.kv_store_max_gb * (1 << 30)),
                                  kv_store_dtype=args.kv_store_dtype,
                                  model_name=args.model_name, chat=not args.no_chat, ui=not args.no_ui)
    except ValueError as exc:
        where = f" (the key in --api-key-file {args.api_key_file})" if args.api_key_file and "api_key" in str(exc) else ""
        raise SteercError(f"invalid option: {exc}{where}") from None
    steer_defaults = steer_config(args)
    engine = Engine.load(args.engine, device=args.device, threads=args.threads, backend=args.backend)
    check_profile(args, engine)
    store = open_store(settings.kv_store, settings.memory_store_bytes, settings.store_timeout_s, settings.kv_store_max_bytes, settings.kv_store_dtype)
    app = create_app(engine, settings, store, steer_defaults, steer_values(args))
    name = app.state.steerc.service.model_name
    print(f"steerc serve: {name} ({engine.max_seq_len} tokens) on http://{settings.host}:{settings.port}/v1  "
          f"[{settings.max_concurrency} concurrent, batch {app.state.steerc.service.batcher.max_batch}, queue {settings.max_queue}, timeout {settings.request_timeout_s:g} s, "
          f"KV store {settings.kv_store or 'memory + ' + str(default_root())}, API key {'required' if settings.api_key else ('per tenant' if settings.api_keys_file else 'off')}]", file=sys.stderr, flush=True)
    if settings.ui:
        print(f"steerc serve: playground on http://{settings.host}:{settings.port}/ (--no-ui turns it off)", file=sys.stderr, flush=True)
    if not _loopback(settings.host) and not settings.api_key and not settings.api_keys_file:
        print(f"steerc serve: warning: listening on {settings.host} without an API key; anyone who can reach it can use it (set --api-key)", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def add_serve_parser(sub) -> None:
    from steerc.cli.steer_options import add_method_option, add_steer_options

    p = sub.add_parser("serve", help="serve an engine over HTTP: OpenAI-compatible completions with steered, reusable contexts")
    p.add_argument("engine", help="engine folder (from steerc compile)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health (or set STEERC_API_KEY)")
    key.add_argument("--api-key-file", default=None, metavar="FILE", help="as --api-key, the key read from FILE (one line, UTF-8): kept out of the process list")
    key.add_argument("--api-keys", default=None, metavar="FILE", help="one 'TENANT KEY' per line: each tenant's contexts are kept apart "
                                                                       "(ids, entries, reads and deletes), and another tenant's id answers 404")
    p.add_argument("--share-contexts", action="store_true", help="with --api-keys: all tenants share one store namespace")
    p.add_argument("--kv-store", default=None, help="prepared-context store: 'memory', a folder, or redis://host:port/db "
                                                    "(shared by servers); default: memory + ~/.cache/steerc/contexts")
    p.add_argument("--store-timeout", type=float, default=10.0, help="seconds a Redis command may take; past it the request is answered without the store (default 10)")
    p.add_argument("--memory-store-mb", type=int, default=1024, help="in-memory store budget (MiB)")
    p.add_argument("--kv-store-max-gb", type=float, default=None, help="disk store budget (GiB): a write first evicts the least recently read "
                                                                       "entries; pinned contexts and KVs still in use are kept (default: unbounded)")
    add_kv_store_dtype_option(p)
    p.add_argument("--max-concurrency", type=int, default=8, help="requests worked on at once: planning, context preparation, prefill and decode (default 8)")
    p.add_argument("--max-batch", type=int, default=8, help="running generations whose decode steps share one engine call (continuous batching; "
                                                            "at most the engine's compiled --max-batch; 1: one at a time; default 8)")
    p.add_argument("--prefill-chunk", type=int, default=256, help="prefill in calls of at most this many tokens, taking turns with the decode steps (default 256)")
    p.add_argument("--max-queue", type=int, default=32, help="requests that may wait for a slot; more get 429 (default 32)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds from arrival to last token (default 300)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the engine folder's name)")
    p.add_argument("--no-chat", action="store_true", help="do not use the chat template (base models)")
    p.add_argument("--no-ui", action="store_true", help="do not serve the playground page at / (the API is unchanged)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    add_backend_option(p, "what runs the step graph (the engine must have been compiled with that --backend)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per session (default: all cores)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's log level")
    add_method_option(p, "default steering method of requests that send steer without one")
    add_steer_options(p, omit=("highlights",))  # the defaults a request's steer fields override
    p.set_defaults(func=cmd_serve)
