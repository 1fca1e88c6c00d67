"""The HTTP routes, one module per resource; :func:`build_router` puts them together.

``health``: ``/health`` and ``/ready`` (open); ``metrics``: ``/metrics``; ``completions``:
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``; ``contexts``:
``/v1/contexts``. All but the open ones need the API key (:func:`~steerc.server.routes.deps.authorized`).
Routes reach the server through the ``State`` dependency (``app.state.steerc``).
"""

from fastapi import APIRouter, Depends

from steerc.server.bodies import RequestBodies
from steerc.server.routes import completions, contexts, health, metrics
from steerc.server.routes.deps import authorized

__all__ = ["build_router"]


def build_router(bodies: RequestBodies) -> APIRouter:
    """Every route, in the OpenAPI schema's order; ``bodies``: the request models to validate with."""
    api = APIRouter(dependencies=[Depends(authorized)])
    api.include_router(metrics.router)
    api.include_router(completions.build(bodies))
    api.include_router(contexts.build(bodies))
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(api)
    return router
