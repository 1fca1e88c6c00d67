"""The OpenAI routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``.

Built by :func:`build` with the app's request models (:mod:`steerc.server.bodies`); the
annotations are evaluated when the routes are defined (no ``from __future__ import
annotations``), which is how FastAPI sees a model chosen at app-build time.
"""

from fastapi import APIRouter, Request

from steerc.server.answers import generate
from steerc.server.bodies import RequestBodies
from steerc.server.routes.deps import State

__all__ = ["build"]

# A completion answers JSON, or server-sent events when the body says "stream": true.
_ANSWER = {200: {"description": "the completion (JSON), or its chunks as server-sent events with stream: true",
                 "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}}}}


def build(bodies: RequestBodies) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models(state: State):
        return {"object": "list", "data": [{"id": state.service.model_name, "object": "model", "created": state.started, "owned_by": "steerc",
                                            "max_model_len": state.service.engine.max_seq_len}]}

    @router.post("/v1/completions", responses=_ANSWER)
    async def completions(request: Request, body: bodies.completion, state: State):
        return await generate(state, request, body, "/v1/completions", lambda: state.service.plan_completion(body, request.state.tenant), chat=False, last=len(body.prompts) - 1)

    @router.post("/v1/chat/completions", responses=_ANSWER)
    async def chat_completions(request: Request, body: bodies.chat, state: State):
        return await generate(state, request, body, "/v1/chat/completions", lambda: state.service.plan_chat(body, request.state.tenant), chat=True, last=0)

    return router
