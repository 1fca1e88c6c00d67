"""A `steerc serve` whose Redis store is killed in the middle of a run of requests, then restarted:
inline requests keep answering (as the healthy server did), /ready says 503 then 200, and the
server uses Redis again once it is back. A Redis that stops answering costs a request at most
the store timeout."""

import threading
import time

import httpx
import pytest
from conftest import Server
from redis_server import Redis

from test_api import CONTEXT, QUESTION

CONTEXTS = [f"{CONTEXT[:400]} (fault run {i})" for i in range(6)]


@pytest.fixture(scope="module")
def redis_and_server(tiny_text_engine, tmp_path_factory):
    redis = Redis(tmp_path_factory.mktemp("fault-redis"))
    server = Server(tiny_text_engine, tmp_path_factory.mktemp("fault-serve"), "--kv-store", redis.url, "--memory-store-mb", "0", "--store-timeout", "1")
    yield redis, server
    server.stop()
    redis.stop()


def _ask(server, context: str) -> dict:
    with server.client() as c:
        r = c.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 6, "temperature": 0, "steer": {"context": context}})
    assert r.status_code == 200, r.text
    return r.json()


def _keys(redis) -> int:
    import redis as redis_py

    return len(list(redis_py.Redis.from_url(redis.url).scan_iter(match="steerc:ctx:*")))


def test_inline_requests_survive_a_redis_outage_and_redis_is_used_again(redis_and_server):
    redis, server = redis_and_server
    assert httpx.get(server.url + "/ready").json() == {"status": "ready", "model": "engine", "store": "ok"}
    healthy = {}
    for context in CONTEXTS:
        body = _ask(server, context)
        assert body["steer"]["store"] == "ok" and body["steer"]["cache"] == "miss"
        healthy[context] = body["choices"][0]["text"]
    assert _keys(redis) > 0
    with server.client() as c:
        registered = c.post("/v1/contexts", json={"context": CONTEXTS[0]}).json()
    assert registered["store"] == "ok"

    answers, killed = {}, threading.Event()

    def run():
        for i, context in enumerate(CONTEXTS):
            if i == 2:
                redis.kill()  # in the middle of the run
                killed.set()
            answers[context] = _ask(server, context)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(300)
    assert killed.is_set() and len(answers) == len(CONTEXTS)  # every request answered
    assert {c: a["choices"][0]["text"] for c, a in answers.items()} == healthy  # the same greedy answers
    after = [answers[c]["steer"] for c in CONTEXTS[2:]]
    assert all(s["store"] == "unavailable" and s["cache"] == "miss" and s["context_prefill_tokens"] > 0 for s in after)
    assert [answers[c]["steer"]["cache"] for c in CONTEXTS[:2]] == ["redis", "redis"]

    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 503 and ready.json()["store"] == "unavailable" and "Redis" in ready.json()["reason"]
    assert httpx.get(server.url + "/health").status_code == 200  # still alive
    assert server.metric("steerc_store_errors_total", backend="redis", operation="get") >= 1
    with server.client() as c:  # a registered context's text lives only in the store: a clear 503
        r = c.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 2, "steer": {"context_id": registered["id"]}})
    assert r.status_code == 503 and r.json()["error"]["code"] == "kv_store_unavailable" and "Redis" in r.json()["error"]["message"]
    assert server.metric("steerc_store_errors_total", backend="redis", operation="registry_get") == 1  # and counted

    redis.start()  # back, empty
    deadline = time.monotonic() + 35  # /ready asks the store again once its retry interval (at most 30 s) is over
    while (ready := httpx.get(server.url + "/ready", timeout=5)).status_code != 200:
        assert ready.json()["store"] == "unavailable" and time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    body = _ask(server, CONTEXTS[0])
    assert body["steer"]["store"] == "ok" and body["steer"]["cache"] == "miss" and body["choices"][0]["text"] == healthy[CONTEXTS[0]]
    assert _keys(redis) > 0  # written to Redis again
    assert _ask(server, CONTEXTS[0])["steer"]["cache"] == "redis"


def test_a_redis_that_does_not_answer_costs_at_most_the_store_timeout(redis_and_server):
    import redis as redis_py

    redis, server = redis_and_server
    start = time.perf_counter()
    healthy = _ask(server, CONTEXT[:400] + " (slow, healthy)")
    healthy_s = time.perf_counter() - start
    assert healthy["steer"]["store"] == "ok" and healthy["steer"]["cache"] == "miss"
    redis_py.Redis.from_url(redis.url).execute_command("CLIENT", "PAUSE", "6000", "ALL")  # every command waits 6 s
    start = time.perf_counter()
    slow = _ask(server, CONTEXT[:400] + " (slow, paused)")
    paused_s = time.perf_counter() - start
    assert slow["steer"]["store"] == "unavailable" and slow["steer"]["cache"] == "miss"
    assert paused_s < healthy_s + 1 + 1.5, (healthy_s, paused_s)  # the prepare, one 1 s store timeout, slack
    assert server.metric("steerc_store_errors_total", backend="redis", operation="get") >= 2
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/ready").status_code != 200:  # the pause ends
        assert time.monotonic() < deadline, "the store did not come back after the pause"
        time.sleep(0.5)
    assert _ask(server, CONTEXT[:400] + " (slow, after)")["steer"]["store"] == "ok"
