"""Registered contexts: ``POST`` and ``GET /v1/contexts`` (register; list the caller's), ``GET``
and ``DELETE /v1/contexts/{context_id}``.

Built by :func:`build` with the app's request models (see :mod:`steerc.server.routes.completions`
for why the annotations are evaluated at definition). Registration prepares the context on a
worker thread, admitted like a generation; reading and deleting a record use the store only.
"""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from steerc.server.answers import record_context, run_one
from steerc.server.bodies import RequestBodies
from steerc.server.routes.deps import State

__all__ = ["build", "MAX_PAGE"]

MAX_PAGE = 100  # contexts per page of GET /v1/contexts


def build(bodies: RequestBodies) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/contexts")
    async def register_context(request: Request, body: bodies.context, state: State):
        tenant = request.state.tenant
        result = await run_one(state, request, lambda job: state.service.register(job, body, tenant))
        record_context(state.metrics, result)
        return result

    @router.get("/v1/contexts")
    async def list_contexts(request: Request, state: State,
                            limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="contexts per page")] = 20,
                            after: Annotated[str | None, Query(max_length=200, description="the last id of the previous page")] = None):
        """The caller's registered contexts, newest first (another tenant's never appear)."""
        registry = state.service.view(request.state.tenant)[1]
        return await run_in_threadpool(registry.listing, limit, after)

    @router.get("/v1/contexts/{context_id}")
    async def get_context(request: Request, context_id: str, state: State):
        registry = state.service.view(request.state.tenant)[1]  # another tenant's id is unknown here: 404
        return await run_in_threadpool(lambda: registry.public(registry.get(context_id)))

    @router.delete("/v1/contexts/{context_id}")
    async def delete_context(request: Request, context_id: str, state: State):
        return await run_in_threadpool(state.service.view(request.state.tenant)[1].delete, context_id)

    return router
