"""Concurrency: no state mixes between requests, one preparation per new context, bounded
queue (429), request timeout (504), and a client that leaves cancels its generation."""

import concurrent.futures as cf
import threading
import time

import httpx
import pytest
from conftest import Server

from test_api import CONTEXT

QUESTIONS = ["Who won?", "Where was the game?", "Which conference?", "What was the score?", "Who lost?", "When was it?", "What anniversary?", "Which stadium?"]


def _requests(context_id: str) -> list[tuple[str, dict]]:
    """16 different requests: plain and steered, completions and chat, greedy and seeded, streamed and not."""
    out = []
    for i, q in enumerate(QUESTIONS):
        steer = {"context_id": context_id} if i % 2 else {"context": CONTEXT, "alpha": 0.3}
        out.append(("/v1/chat/completions", {"messages": [{"role": "user", "content": q}], "max_tokens": 12, "temperature": 0, "steer": steer,
                                             "stream": i % 4 == 1}))
        sampling = {"temperature": 0.8, "seed": i} if i % 2 else {"temperature": 0}
        out.append(("/v1/completions", {"prompt": f"Question {i}: {q} Answer:", "max_tokens": 12 + i, **sampling, "stream": i % 4 == 2}))
    return out


def _answer(client: httpx.Client, path: str, body: dict) -> str:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    if not body.get("stream"):
        choice = r.json()["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]
    text = ""
    for block in r.text.strip().split("\n\n"):
        data = block.removeprefix("data: ")
        if data != "[DONE]":
            import json

            choice = json.loads(data)["choices"][0]
            text += choice.get("text") or choice.get("delta", {}).get("content") or ""
    return text


def test_16_concurrent_requests_each_equal_their_sequential_answer(server):
    with server.client() as c:
        context_id = c.post("/v1/contexts", json={"context": CONTEXT}).json()["id"]
        requests = _requests(context_id)
        sequential = [_answer(c, path, body) for path, body in requests]
    assert len(set(sequential)) > 8  # the requests really differ

    barrier = threading.Barrier(len(requests))

    def one(request):
        with server.client() as client:
            barrier.wait()  # all 16 in flight together: 4 run, 12 queue
            return _answer(client, *request)

    with cf.ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(one, requests))
    assert concurrent == sequential


def test_concurrent_requests_on_a_new_context_prepare_it_once(server):
    context = CONTEXT + " (single-flight test)"
    barrier = threading.Barrier(8)

    def one(i):
        with server.client() as client:
            barrier.wait()
            r = client.post("/v1/completions", json={"prompt": QUESTIONS[i], "max_tokens": 3, "temperature": 0, "steer": {"context": context}})
            return r.json()["steer"]

    with cf.ThreadPoolExecutor(8) as pool:
        stats = list(pool.map(one, range(8)))
    prepared = [s for s in stats if s["context_prefill_tokens"] > 0]
    assert len(prepared) == 1 and prepared[0]["cache"] == "miss"
    assert all(s["cache"] == "memory" for s in stats if s is not prepared[0])  # waited for it, then hit


# -- limits on the real default model (slow enough that requests overlap for sure) -------------


@pytest.fixture(scope="module")
def slow_server(default_engine, tmp_path_factory):
    # 30 s: well past 1 running + 1 queued 80-token answers on a loaded 2-core machine (8 s was not), well short of 1500 tokens
    srv = Server(default_engine, tmp_path_factory.mktemp("slow-serve"), "--max-concurrency", "1", "--max-queue", "1", "--request-timeout", "30",
                 "--threads", "1")
    yield srv
    srv.stop()


TIMEOUT_S = 4  # the 504 test's server: a few seconds, well short of a 1500-token answer (tens of seconds here)


@pytest.fixture(scope="module")
def timeout_server(default_engine, tmp_path_factory):
    """As ``slow_server``, with a short --request-timeout: the 504 test waits it out, and 30 s (what
    the 429 test needs to finish its admitted answers) would cost that long."""
    srv = Server(default_engine, tmp_path_factory.mktemp("timeout-serve"), "--max-concurrency", "1", "--max-queue", "1", "--request-timeout",
                 str(TIMEOUT_S), "--threads", "1")
    yield srv
    srv.stop()


COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the model goes on counting: a long answer for sure


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.02)


def _idle(srv: Server, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (srv.metric("steerc_requests_in_flight") or srv.metric("steerc_queue_depth")):
        time.sleep(0.1)


@pytest.mark.slow
def test_full_queue_gets_429_and_the_admitted_requests_finish(slow_server):
    long = {"prompt": COUNT, "max_tokens": 80, "temperature": 0}
    with slow_server.client() as c1, slow_server.client() as c2, slow_server.client() as c3, cf.ThreadPoolExecutor(2) as pool:
        running = pool.submit(c1.post, "/v1/completions", json=long)
        _wait_for(lambda: slow_server.metric("steerc_requests_in_flight"), 30, "the first request to run")
        queued = pool.submit(c2.post, "/v1/completions", json=long)
        _wait_for(lambda: slow_server.metric("steerc_queue_depth"), 30, "the second request to queue")
        refused = c3.post("/v1/completions", json=long)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full" and "--max-queue 1" in refused.json()["error"]["message"]
        assert running.result().status_code == 200 and queued.result().status_code == 200
        assert queued.result().json()["usage"]["completion_tokens"] == 80


@pytest.mark.slow
def test_request_over_the_timeout_gets_504(timeout_server):
    _idle(timeout_server)
    before = timeout_server.metric("steerc_cancelled_requests_total", reason="timeout")
    with timeout_server.client() as c:
        r = c.post("/v1/completions", json={"prompt": COUNT, "max_tokens": 1500, "temperature": 0})
    assert r.status_code == 504 and f"limit of {TIMEOUT_S} s" in r.json()["error"]["message"]
    assert timeout_server.metric("steerc_cancelled_requests_total", reason="timeout") == before + 1
    _idle(timeout_server, 5)
    assert timeout_server.metric("steerc_requests_in_flight") == 0  # the generation stopped, not just the response


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.slow
def test_client_disconnect_cancels_the_generation(slow_server, stream):
    _idle(slow_server)
    tokens_before = slow_server.metric("steerc_generated_tokens_total")
    cancelled_before = slow_server.metric("steerc_cancelled_requests_total", reason="disconnect")
    body = {"prompt": COUNT, "max_tokens": 400, "temperature": 0, "stream": stream}
    with httpx.Client(base_url=slow_server.url, headers=slow_server.headers, timeout=httpx.Timeout(30, read=1.5)) as c:
        if stream:
            with c.stream("POST", "/v1/completions", json=body) as r:
                next(r.iter_lines())  # the first token arrived: leave
        else:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/completions", json=body)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and slow_server.metric("steerc_cancelled_requests_total", reason="disconnect") == cancelled_before:
        time.sleep(0.1)
    assert slow_server.metric("steerc_cancelled_requests_total", reason="disconnect") == cancelled_before + 1
    _idle(slow_server, 5)
    assert slow_server.metric("steerc_requests_in_flight") == 0
    assert slow_server.metric("steerc_generated_tokens_total") == tokens_before  # a cancelled answer is not counted as generated
