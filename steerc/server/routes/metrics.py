"""``GET /metrics``: the server's Prometheus metrics (:mod:`steerc.server.metrics`)."""

from fastapi import APIRouter
from fastapi.responses import Response

from steerc.server.metrics import CONTENT_TYPE
from steerc.server.routes.deps import State

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}})
async def prometheus(state: State):
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
