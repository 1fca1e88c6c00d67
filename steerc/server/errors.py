"""API errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can cause maps to one status and a message that says what was wrong
and what to do: 400 (invalid request, context too long), 401 (API key), 404 (model, context
id, route), 413 (body too large), 429 (queue full), 503 (KV store down), 504 (timed out).
:func:`register_error_handlers` makes an app answer every exception in that shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from steerc.errors import SteercError

__all__ = ["UNSUPPORTED", "ApiError", "Cancelled", "TimedOut", "api_error", "register_error_handlers", "validation_message"]

log = logging.getLogger(__name__)

# OpenAI options steerc accepts only at their neutral value.
UNSUPPORTED = {"n", "echo", "logprobs", "top_logprobs", "best_of", "suffix", "presence_penalty", "frequency_penalty", "logit_bias"}


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """The client went away; the generation stops at the next token."""


class TimedOut(Exception):
    """The request ran past its deadline."""


def api_error(exc: BaseException, timeout_s: float | None = None) -> ApiError:
    """The ApiError a failure maps to (an unexpected one is logged with its traceback: a bug)."""
    from steerc.runtime.engine import ContextTooLongError
    from steerc.stores.base import StoreUnavailableError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TimedOut):
        return ApiError(504, f"the request took longer than the server's limit of {timeout_s:g} s (steerc serve --request-timeout)", "timeout_error", code="timeout")
    if isinstance(exc, ContextTooLongError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, StoreUnavailableError):
        return ApiError(503, str(exc), "server_error", code="kv_store_unavailable")
    if isinstance(exc, (SteercError, ValueError)):
        return ApiError(400, str(exc))
    log.exception("internal error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def _loc(loc) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else [str(p) for p in loc]
    return ".".join(parts)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One message (and the first bad parameter) from pydantic's error list."""
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
        return f"the request body is not valid JSON ({detail or 'parse error'}); send a JSON object", None
    if errors and all(not _loc(e.get("loc", ())) for e in errors):
        checks = [e for e in errors if e.get("type") == "value_error"]  # a whole-body check (schemas._Strict) names its field first
        if checks:
            msg = checks[0].get("msg", "invalid").removeprefix("Value error, ")
            return msg, msg.split(":")[0] if ":" in msg else None
        return "the request body must be a JSON object", None
    seen, lines = set(), []
    for e in errors:
        where = _loc(e.get("loc", ()))
        # A union reports one error per branch; the branch names (str, list[...]) are noise.
        where = ".".join(p for p in where.split(".") if not (p.startswith(("list[", "str", "int", "float", "function-", "literal[", "json-or-python")) or p in ("constrained-str",)))
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field (see the API reference in the README)"
        elif where.split(".")[0] in UNSUPPORTED:
            msg += " (steerc supports only the default for this option)"
        if "input" in e and e.get("type") != "extra_forbidden" and not isinstance(e["input"], (dict, list)):
            msg += f", got {e['input']!r}"[:120]
        line = f"{where}: {msg}" if where else msg
        if line not in seen:
            seen.add(line)
            lines.append(line)
    first = _loc(errors[0].get("loc", ())) if errors else None
    return "; ".join(lines[:5]) + (f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""), (first.split(".")[0] if first else None)


_ROUTES = "/v1/completions, /v1/chat/completions, /v1/contexts, /v1/documents, /v1/models, /health, /ready, /metrics"


def _allowed_methods(request) -> list[str]:
    """The methods the app's routes take on ``request``'s path."""
    from starlette.routing import Match

    def routes(items):
        for route in items:
            inner = getattr(route, "original_router", None) or (route if hasattr(route, "routes") and not hasattr(route, "methods") else None)
            if inner is not None:
                yield from routes(inner.routes)
            else:
                yield route

    methods = set()
    for route in routes(request.app.routes):
        if getattr(route, "methods", None) and hasattr(route, "matches") and route.matches({**request.scope, "method": "GET"})[0] != Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


def register_error_handlers(app, timeout_s: float) -> None:
    """Answer every exception ``app`` raises as an OpenAI error body: an :class:`ApiError` as
    itself, a client gone as 499, a body that fails validation as 400, an unknown route or
    method as 404 or 405, and anything else through :func:`api_error` (``timeout_s``: the
    request timeout a 504 names)."""
    from fastapi.exceptions import RequestValidationError  # FastAPI is optional: imported when an app is built
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def on_api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    async def on_cancelled(request, exc: Cancelled):
        return JSONResponse(ApiError(499, "the client closed the request").body(), 499)

    async def on_invalid(request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        in_body = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors())
        if in_body and "json" not in request.headers.get("content-type", ""):
            message, param = f"send the body as a JSON object with 'Content-Type: application/json' (got {request.headers.get('content-type') or 'no content type'!r})", None
        return JSONResponse(ApiError(400, message, param=param).body(), 400)

    async def on_http(request, exc: HTTPException):
        headers = dict(exc.headers or {})
        allowed = _allowed_methods(request)
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed)  # RFC 9110: a 405 lists what the path takes
        message = {404: f"no route {request.method} {request.url.path}; the API is {_ROUTES}",
                   405: f"{request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).body(), exc.status_code,
                            headers=headers)

    async def on_error(request, exc: Exception):
        error = api_error(exc, timeout_s)
        return JSONResponse(error.body(), error.status)

    for kind, handler in ((ApiError, on_api_error), (Cancelled, on_cancelled), (RequestValidationError, on_invalid), (HTTPException, on_http), (Exception, on_error)):
        app.add_exception_handler(kind, handler)
