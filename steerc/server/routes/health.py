"""``GET /health`` (the process answers) and ``GET /ready`` (engine and store usable): open, for probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from steerc.server.routes.deps import State

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(state: State):
    admission = state.admission
    return {"status": "ok", "model": state.service.model_name, "running": admission.active, "queued": admission.waiting}


@router.get("/ready", responses={503: {"description": "the engine is not loaded or the store does not answer (reason)",
                                         "content": {"application/json": {"schema": {"type": "object"}}}}})
async def ready(state: State):
    service = state.service
    problems = await run_in_threadpool(service.not_ready)
    body = {"status": "not ready" if problems else "ready", "model": service.model_name, "store": "unavailable" if "store" in problems else "ok"}
    if problems:
        body["reason"] = "; ".join(problems.values())
    return JSONResponse(body, 503 if problems else 200)
