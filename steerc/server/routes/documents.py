"""Registered documents: ``POST /v1/documents``, ``GET`` and ``DELETE /v1/documents/{document_id}``.

Registering computes the document's KV on a worker thread, admitted like a generation; reading
and deleting a record use the store only. A chat or completion request then names documents
in ``steer.documents`` (ids from here, or inline texts), and its context is assembled from their
stored KVs (:mod:`steerc.steering.documents`).
"""

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from steerc.server.answers import run_one
from steerc.server.bodies import RequestBodies
from steerc.server.routes.deps import State

__all__ = ["build"]


def build(bodies: RequestBodies) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/documents")
    async def register_document(request: Request, body: bodies.document, state: State):
        tenant = request.state.tenant
        result = await run_one(state, request, lambda job: state.service.register_document(job, body, tenant))
        return result

    @router.get("/v1/documents/{document_id}")
    async def get_document(request: Request, document_id: str, state: State):
        registry = state.service.documents(request.state.tenant)  # another tenant's id is unknown here: 404
        return await run_in_threadpool(lambda: registry.public(registry.get(document_id)))

    @router.delete("/v1/documents/{document_id}")
    async def delete_document(request: Request, document_id: str, state: State):
        return await run_in_threadpool(state.service.documents(request.state.tenant).delete, document_id)

    return router
