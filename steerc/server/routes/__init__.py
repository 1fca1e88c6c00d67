"""The HTTP routes, one module per resource; :func:`build_router` puts them together.

``health``: ``/health`` and ``/ready`` (open); ``metrics``: ``/metrics``; ``completions``:
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``; ``contexts``:
``/v1/contexts``; ``ui``: ``/``, the playground page (left out of the OpenAPI schema). All but the open ones need the API key (:func:`~steerc.server.routes.deps.authorized`).
Routes reach the server through the ``State`` dependency (``app.state.steerc``).
"""

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from steerc.server.bodies import RequestBodies
from steerc.server.routes import completions, contexts, documents, health, metrics
from steerc.server.routes import ui as playground
from steerc.server.routes.deps import authorized

__all__ = ["build_router"]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error the server answers with (OpenAI's shape)."""

    error: ErrorDetail


def _errors(*codes: int) -> dict:
    words = {400: "invalid request (the message names the field)", 401: "missing or wrong API key", 404: "unknown model, context id or route",
             405: "method not allowed (the Allow header lists the methods)", 413: "request body over --max-body-bytes",
             429: "queue full (Retry-After)", 500: "internal error", 503: "the context store is unavailable, or not ready",
             504: "the request timed out (--request-timeout)"}
    return {code: {"model": ErrorBody, "description": words[code]} for code in codes}


API_ERRORS = _errors(400, 401, 404, 405, 413, 429, 500, 503, 504)  # what any authorized route may answer


def build_router(bodies: RequestBodies, ui: bool = True) -> APIRouter:
    """Every route, in the OpenAPI schema's order; ``bodies``: the request models to validate with;
    ``ui``: serve the playground page at ``/`` (open, like the probes: the page asks for the key)."""
    api = APIRouter(dependencies=[Depends(authorized)], responses=API_ERRORS)
    api.include_router(metrics.router)
    api.include_router(completions.build(bodies))
    api.include_router(contexts.build(bodies))
    api.include_router(documents.build(bodies))
    router = APIRouter(responses=_errors(405, 500))
    router.include_router(health.router)
    if ui:
        router.include_router(playground.build())
    router.include_router(api)
    return router
