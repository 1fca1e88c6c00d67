"""``steerc serve``: the OpenAI-compatible HTTP server over an engine."""

from __future__ import annotations

import ipaddress
import os
import sys

from steerc.cli.common import DEVICES, add_backend_option
from steerc.cli.settings_flags import add_settings_flags, settings_from_args
from steerc.errors import SteercError
from steerc.server.settings import ServerSettings

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

    require("fastapi", "steerc serve", "pip install 'steerc[serve]'")
    uvicorn = require("uvicorn", "steerc serve", "pip install 'steerc[serve]'")
    from steerc.cli.steer_options import check_profile, steer_config, steer_values
    from steerc.runtime import Engine
    from steerc.server import create_app
    from steerc.stores import default_root, open_store

    api_key = _key_file(args.api_key_file) if args.api_key_file else args.api_key or (None if args.api_keys else os.environ.get("STEERC_API_KEY")) or None
    try:
        settings = settings_from_args(ServerSettings, args, api_key=api_key, api_keys_file=args.api_keys)
    except ValueError as exc:
        where = f" (the key in --api-key-file {args.api_key_file})" if args.api_key_file and "api_key" in str(exc) else ""
        raise SteercError(f"invalid option: {exc}{where}") from None
    steer_defaults = steer_config(args)
    engine = Engine.load(args.engine, device=args.device, threads=args.threads, backend=args.backend)
    check_profile(args, engine)
    store = open_store(settings.kv_store, settings.memory_store_bytes, settings.store_timeout_s, settings.kv_store_max_bytes, settings.kv_store_dtype)
    app = create_app(engine, settings, store, steer_defaults, steer_values(args))
    name = app.state.steerc.service.model_name
    batch = app.state.steerc.service.batcher.max_batch
    if note := batch_note(engine, batch):
        print(f"steerc serve: note: {note}", file=sys.stderr, flush=True)
    print(f"steerc serve: {name} ({engine.max_seq_len} tokens) on http://{settings.host}:{settings.port}/v1  "
          f"[{settings.max_concurrency} concurrent, batch {batch}, queue {settings.max_queue}, timeout {settings.request_timeout_s:g} s, "
          f"KV store {settings.kv_store or 'memory + ' + str(default_root())}, API key {'required' if settings.api_key else ('per tenant' if settings.api_keys_file else 'off')}]", file=sys.stderr, flush=True)
    if settings.ui:
        print(f"steerc serve: playground on http://{settings.host}:{settings.port}/ (--no-ui turns it off)", file=sys.stderr, flush=True)
    if not _loopback(settings.host) and not settings.api_key and not settings.api_keys_file:
        print(f"steerc serve: warning: listening on {settings.host} without an API key; anyone who can reach it can use it (set --api-key)", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def batch_note(engine, max_batch: int) -> str | None:
    """What a user should know before serving ``engine`` batched: None when batched rows compute
    bit for bit as alone (left-aligned in-place buffers) or nothing is batched."""
    if max_batch <= 1 or engine.aligned_rows:
        return None
    why = (f"its rows cannot be left-aligned ({(engine.manifest.get('attention') or {}).get('aligned_rows_off', 'see steerc inspect')}); "
           if engine.kv_in_place else "compile with --kv in-place for rows that compute bit for bit as alone, ")
    return ("this engine batches rows left-padded, so a batched answer can differ from the same request served alone in the last bits of its "
            f"logits (greedy tokens rarely, int4 weights more often): {why}or serve with --max-batch 1 for answers that equal solo runs exactly")


def add_serve_parser(sub) -> None:
    from steerc.cli.steer_options import add_method_option, add_steer_options

    p = sub.add_parser("serve", help="serve an engine over HTTP: OpenAI-compatible completions with steered, reusable contexts")
    p.add_argument("engine", help="engine folder (from steerc compile)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health (or set STEERC_API_KEY)")
    key.add_argument("--api-key-file", default=None, metavar="FILE", help="as --api-key, the key read from FILE (one line, UTF-8): kept out of the process list")
    key.add_argument("--api-keys", default=None, metavar="FILE", help="one 'TENANT KEY' per line: each tenant's contexts are kept apart "
                                                                       "(ids, entries, reads and deletes), and another tenant's id answers 404")
    add_settings_flags(p, ServerSettings)  # every other server setting, declared once in steerc/server/settings.py
    p.add_argument("--device", default="cpu", choices=DEVICES)
    add_backend_option(p, "what runs the step graph (the engine must have been compiled with that --backend)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per session (default: all cores)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's log level")
    add_method_option(p, "default steering method of requests that send steer without one")
    add_steer_options(p, omit=("highlights",))  # the defaults a request's steer fields override
    p.set_defaults(func=cmd_serve)
