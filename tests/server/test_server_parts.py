"""The app's parts without an engine: request-model hook, route assembly, error handlers, scheduler."""

import asyncio
import time
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from steerc.server.bodies import RequestBodies, request_bodies
from steerc.server.errors import ApiError, Cancelled, TimedOut, register_error_handlers
from steerc.server.limits import Admission
from steerc.server.metrics import Metrics
from steerc.server.routes import build_router
from steerc.server.scheduling import Scheduler
from steerc.server.schemas import ChatCompletionRequest, CompletionRequest, ContextRequest
from steerc.server.settings import ServerSettings
from steerc.server.tenants import Tenants

KEY = "k" * 12


def test_request_bodies_default_to_the_schemas_and_refuse_non_models():
    bodies = request_bodies()  # made now, from the methods registered now: the schemas' bodies, field for field
    assert issubclass(bodies.completion, CompletionRequest) and issubclass(bodies.chat, ChatCompletionRequest)
    for made, schema in ((bodies.completion, CompletionRequest), (bodies.chat, ChatCompletionRequest), (bodies.context, ContextRequest)):
        assert made.model_json_schema()["properties"].keys() == schema.model_json_schema()["properties"].keys()
    with pytest.raises(ValueError, match="chat must be a pydantic model class"):
        RequestBodies(CompletionRequest, dict, ContextRequest)


def _app(bodies: RequestBodies = None) -> FastAPI:
    app = FastAPI()
    app.state.steerc = SimpleNamespace(settings=ServerSettings(api_key=KEY), metrics=Metrics(lambda: 0, lambda: 0),
                                       service=SimpleNamespace(tenants=Tenants(api_key=KEY)))
    app.include_router(build_router(bodies or request_bodies()))
    register_error_handlers(app, 7.0)
    return app


def test_routes_validate_with_the_models_given_at_build_time():
    class Custom(CompletionRequest):  # stands in for a model generated when the app is built
        flavour: str = "plain"

    schema = _app(RequestBodies(Custom, ChatCompletionRequest, ContextRequest)).openapi()
    body = schema["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Custom"} and "flavour" in schema["components"]["schemas"]["Custom"]["properties"]
    assert list(schema["paths"]) == ["/health", "/ready", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/contexts",
                                     "/v1/contexts/{context_id}", "/v1/documents", "/v1/documents/{document_id}"]


def test_every_route_but_health_and_ready_needs_the_key():
    with TestClient(_app()) as client:
        for path in ("/metrics", "/v1/models", "/v1/contexts/ctx-x"):
            r = client.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["error"]["code"] == "invalid_api_key", path
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer " + KEY})
        assert r.status_code == 200 and "steerc_requests_total" in r.text


def test_error_handlers_answer_in_the_openai_shape():
    app = FastAPI()
    register_error_handlers(app, 7.0)
    failures = {"api": ApiError(429, "full", "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}), "gone": Cancelled(),
                "late": TimedOut(), "bad": ValueError("bad value"), "bug": RuntimeError("boom")}

    @app.get("/fail/{kind}")
    async def fail(kind: str):
        raise failures[kind]

    @app.post("/body")
    async def body(value: CompletionRequest):
        return {}

    with TestClient(app, raise_server_exceptions=False) as client:
        def error(method, path, **kw):
            r = client.request(method, path, **kw)
            return r.status_code, r.json()["error"], r.headers

        status, err, headers = error("GET", "/fail/api")
        assert (status, err, headers["retry-after"]) == (429, {"message": "full", "type": "rate_limit_error", "param": None, "code": "queue_full"}, "1")
        assert error("GET", "/fail/gone")[:2] == (499, {"message": "the client closed the request", "type": "invalid_request_error", "param": None, "code": None})
        status, err, _ = error("GET", "/fail/late")
        assert status == 504 and "limit of 7 s" in err["message"] and err["code"] == "timeout"
        assert error("GET", "/fail/bad")[:2] == (400, {"message": "bad value", "type": "invalid_request_error", "param": None, "code": None})
        status, err, _ = error("GET", "/fail/bug")
        assert status == 500 and err["message"] == "internal error: RuntimeError: boom" and err["type"] == "server_error"
        status, err, _ = error("GET", "/nowhere")
        assert status == 404 and err["code"] == "not_found" and err["message"].startswith("no route GET /nowhere; the API is /v1/completions")
        assert error("PUT", "/body")[:2] == (405, {"message": "PUT is not allowed on /body; it takes POST", "type": "invalid_request_error", "param": None, "code": None})
        status, err, _ = error("POST", "/body", json={"prompt": "x", "max_tokens": 0})
        assert status == 400 and err["param"] == "max_tokens"
        status, err, _ = error("POST", "/body", content=b"{}", headers={"content-type": "text/plain"})
        assert status == 400 and "Content-Type: application/json" in err["message"] and err["param"] is None


class _Client:
    def __init__(self, gone: bool) -> None:
        self.gone = gone

    async def is_disconnected(self) -> bool:
        return self.gone


def _metric(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_scheduler_runs_work_on_a_thread_and_frees_the_slot():
    async def scenario():
        metrics = Metrics(lambda: 0, lambda: 0)
        scheduler = Scheduler(Admission(1, 0), metrics, timeout_s=30)
        job = await scheduler.start(lambda j: j.emit("done", 0, "answer"))
        assert await scheduler.next_item(job, _Client(False)) == ("done", 0, "answer")
        assert await scheduler.next_item(job, _Client(False)) == ("end",)
        for _ in range(100):
            if scheduler.admission.active == 0:
                break
            await asyncio.sleep(0.01)
        assert scheduler.admission.active == 0 and not scheduler.jobs

        failed = await scheduler.start(lambda j: (_ for _ in ()).throw(TimedOut()))
        kind, exc = await scheduler.next_item(failed, _Client(False))
        error = scheduler.failure(exc)
        assert (kind, error.status, error.code) == ("error", 504, "timeout") and _metric(metrics, "steerc_cancelled_requests_total", reason="timeout") == 1
        scheduler.shutdown()

    asyncio.run(scenario())


def test_scheduler_cancels_the_job_of_a_client_that_left_and_on_shutdown():
    async def scenario():
        metrics = Metrics(lambda: 0, lambda: 0)
        scheduler = Scheduler(Admission(2, 0), metrics, timeout_s=30)

        def wait_for_cancel(job):
            while True:
                job.check()
                time.sleep(0.01)

        job = await scheduler.start(wait_for_cancel)
        job.checked = time.monotonic() - 1  # due for a disconnect check
        with pytest.raises(Cancelled):
            await scheduler.next_item(job, _Client(True))
        assert job.cancel.is_set() and _metric(metrics, "steerc_cancelled_requests_total", reason="disconnect") == 1
        other = await scheduler.start(wait_for_cancel)
        scheduler.shutdown()
        assert other.cancel.is_set()
        while (item := await scheduler.next_item(other, _Client(False)))[0] != "end":
            assert item[0] == "error" and isinstance(item[1], Cancelled)

    asyncio.run(scenario())
