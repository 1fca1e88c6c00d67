"""In-process app: /ready with each failing part, the store error counter, and the `store` field."""

import time

import pytest
from fastapi.testclient import TestClient

from steerc.runtime.engine import Engine
from steerc.server.app import create_app
from steerc.server.settings import ServerSettings
from steerc.stores import MemoryStore, TieredStore

from steps import FailingStore
from test_api import CONTEXT, QUESTION


@pytest.fixture(scope="module")
def app_and_store(tiny_text_engine):
    backing = FailingStore()
    app = create_app(Engine.load(tiny_text_engine), ServerSettings(), TieredStore(MemoryStore(0), backing))
    with TestClient(app) as client:
        yield app, client, backing
    backing.down = False


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _ask(client, context: str) -> dict:
    r = client.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 3, "temperature": 0, "steer": {"context": context}})
    assert r.status_code == 200, r.text
    return r.json()["steer"]


def test_ready_when_the_engine_is_loaded_and_the_store_answers(app_and_store):
    app, client, backing = app_and_store
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["store"] == "ok"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(app_and_store):
    """The store's backoff on a clock the test moves; healthy again afterwards."""
    app, client, backing = app_and_store
    backoff, clock = app.state.steerc.service.store.backoff, Clock()
    backoff.clock = clock
    yield clock
    backing.down = False
    backoff.clock = time.monotonic
    backoff.succeeded()


def test_ready_is_503_with_the_reason_when_the_store_fails(app_and_store, clock):
    app, client, backing = app_and_store
    backing.down = True
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["store"] == "unavailable" and "Redis context store" in r.json()["reason"]
    assert client.get("/health").status_code == 200  # liveness is not readiness
    backing.down = False
    clock.now += 1  # the store's retry interval is over
    assert client.get("/ready").status_code == 200


def test_ready_does_not_ask_a_store_in_its_retry_interval(app_and_store, clock):
    app, client, backing = app_and_store
    store = app.state.steerc.service.store
    backing.down = True
    assert client.get("/ready").status_code == 503  # finds the outage: the next try in 1 s
    calls = backing.calls
    for _ in range(3):  # a hung Redis would cost each of these the store timeout: they answer at once
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["store"] == "unavailable" and "Redis context store" in r.json()["reason"]
    assert backing.calls == calls
    clock.now += 1  # the interval is over: one probe, which fails (the next try in 2 s)
    assert client.get("/ready").status_code == 503 and backing.calls == calls + 1
    backing.down = False
    assert client.get("/ready").status_code == 503 and backing.calls == calls + 1  # back, but not asked within a second of the failure
    clock.now += 1  # a second later (the requests' own interval, 2 s, is not over): a probe, which ends the outage
    assert client.get("/ready").status_code == 200 and backing.calls == calls + 2 and store.available
    assert client.get("/ready").status_code == 200 and backing.calls == calls + 3  # healthy: a ping per call


def test_registered_context_failures_are_503_and_counted(app_and_store, clock):
    app, client, backing = app_and_store
    registered = client.post("/v1/contexts", json={"context": CONTEXT + " (registry)"})
    assert registered.status_code == 200, registered.text
    context_id = registered.json()["id"]
    counter = 'steerc_store_errors_total{backend="redis",operation="registry_get"}'
    before = _metric(client, counter)
    backing.down = True
    r = client.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 2, "steer": {"context_id": context_id}})
    assert r.status_code == 503 and r.json()["error"]["code"] == "kv_store_unavailable" and "Redis" in r.json()["error"]["message"]
    assert _metric(client, counter) == before + 1
    r = TestClient(app, raise_server_exceptions=False).get(f"/v1/contexts/{context_id}")  # asked even within the retry interval
    assert r.status_code == 503 and _metric(client, counter) == before + 2
    backing.down = False
    r = client.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 2, "steer": {"context_id": context_id}})
    assert r.status_code == 200 and app.state.steerc.service.store.available  # a registry success ends the outage


def test_ready_is_503_when_the_engine_is_not_loaded(app_and_store, monkeypatch):
    app, client, backing = app_and_store
    monkeypatch.setattr(app.state.steerc.service.engine, "session", None)
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["reason"] == "the engine is not loaded" and r.json()["store"] == "ok"


def test_the_store_field_and_the_error_counter(app_and_store):
    app, client, backing = app_and_store
    counter = 'steerc_store_errors_total{backend="redis",operation="get"}'
    before = _metric(client, counter)
    assert _ask(client, CONTEXT + " (units)")["cache"] == "miss"
    steer = _ask(client, CONTEXT + " (units)")
    assert steer["store"] == "ok" and steer["cache"] == "redis"
    backoff = app.state.steerc.service.store.backoff
    backoff.clock = lambda: 0.0  # no retry during the outage, however slow the request
    backing.down = True
    try:
        steer = _ask(client, CONTEXT + " (units)")
        assert steer["store"] == "unavailable" and steer["cache"] == "miss" and steer["context_prefill_tokens"] > 0
        assert _metric(client, counter) == before + 1
        r = client.post("/v1/contexts", json={"context": CONTEXT + " (units)"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "kv_store_unavailable"
    finally:
        backing.down = False
        backoff.clock = time.monotonic
    backoff.succeeded()  # skip the backoff interval
    assert _ask(client, CONTEXT + " (units)")["store"] == "ok"
