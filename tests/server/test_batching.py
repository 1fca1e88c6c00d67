"""Continuous batching in `steerc serve`: concurrent requests share decode steps, and each
answer equals the same request served alone.

The HTTP tests run a real server on the tiny text engine (compiled with max_batch 8); the
``Batcher`` tests drive the decode loop directly on the tiny engine.
"""

import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest
from conftest import Server

from steerc.runtime import Engine, SamplingParams, generate, prefill
from steerc.runtime.decode_batch import BatchRow
from steerc.runtime.kv_cache import KVCache
from steerc.server.batching import Batcher, FairLock
from test_api import CONTEXT
from test_concurrency import _answer as _text

LONG_PROMPT = " ".join(f"item {i}," for i in range(60))  # ~240 tokens: several prefill chunks of 32


@pytest.fixture(scope="module")
def batched(tiny_text_engine, tmp_path_factory):
    srv = Server(tiny_text_engine, tmp_path_factory.mktemp("batched"), "--max-concurrency", "8", "--max-batch", "8", "--prefill-chunk", "32",
                 "--kv-store", str(tmp_path_factory.mktemp("batched-store")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def batched_int4_gqa(tiny_text_folder, compiled_engine, tmp_path_factory):
    """The same server on the tiny text model compiled as the fast CPU engine: int4 weights (int8
    activations), GroupQueryAttention over in-place buffers with an int8 cache. Its decode batch
    holds rows left-aligned, so each row computes bit for bit as alone."""
    folder = compiled_engine(tiny_text_folder, max_seq_len=384, max_batch=8, weights="int4", kv="in-place", attention_op="group-query", kv_cache="int8")
    assert Engine.load(folder).aligned_rows
    srv = Server(folder, tmp_path_factory.mktemp("batched-int4"), "--max-concurrency", "8", "--max-batch", "8", "--prefill-chunk", "32",
                 "--kv-store", str(tmp_path_factory.mktemp("batched-int4-store")))
    yield srv
    srv.stop()


def _answer(client, path: str, body: dict, leave_after_first: bool = False) -> str:
    """The answer's text (streamed or not, as test_concurrency reads it); ``leave_after_first``: read
    a stream up to its first text and leave."""
    if not leave_after_first:
        return _text(client, path, body)
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and ('"text":"' in line or '"content":"' in line):
                break
    return "left"


def _mixed(context_id: str) -> list[tuple[str, dict]]:
    """8 requests: steered (inline contexts of two lengths, a registered one) and plain, long and
    short prompts and answers, streamed and not, greedy and seeded."""
    chat = lambda q, steer, n, stream=False: ("/v1/chat/completions", {"messages": [{"role": "user", "content": q}], "max_tokens": n, "temperature": 0,  # noqa: E731
                                                                       "steer": steer, "stream": stream})
    return [
        chat("Who won?", {"context_id": context_id}, 20, True),
        chat("Where was the game?", {"context": CONTEXT[:300], "alpha": 0.2}, 9),
        chat("Which conference?", {"context": CONTEXT, "method": "llmsteer"}, 14, True),
        ("/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 16, "temperature": 0}),
        ("/v1/completions", {"prompt": "Question: who lost? Answer:", "max_tokens": 5, "temperature": 0, "stream": True}),
        ("/v1/completions", {"prompt": "Count: 1, 2,", "max_tokens": 24, "temperature": 0.9, "seed": 7}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 11, "temperature": 0}),
        chat("What was the score?", {"context_id": context_id, "alpha": 0.5}, 7),
    ]


def _batch_steps(srv: Server) -> tuple[float, float]:
    """(decode steps, steps that ran more than one row) so far."""
    return srv.metric("steerc_decode_batch_size_count"), srv.metric("steerc_decode_batch_size_count") - srv.metric("steerc_decode_batch_size_bucket", le="1.0")


@pytest.mark.parametrize("server", ["batched", "batched_int4_gqa"])
def test_8_concurrent_mixed_requests_equal_their_sequential_answers(server, request):
    batched = request.getfixturevalue(server)
    with batched.client() as c:
        context_id = c.post("/v1/contexts", json={"context": CONTEXT}).json()["id"]
        requests = _mixed(context_id)
        sequential = [_answer(c, path, body) for path, body in requests]
    assert len(set(sequential)) == len(sequential)  # the requests really differ
    # a stop string cut out of one answer: that row stops early while the others go on
    stop = sequential[5][4:7]
    requests.append(("/v1/completions", {**requests[5][1], "stop": [stop]}))
    with batched.client() as c:
        sequential.append(_answer(c, *requests[-1]))
    assert sequential[-1] == sequential[5][: sequential[5].index(stop)]

    steps_before, multi_before = _batch_steps(batched)

    barrier = threading.Barrier(len(requests))

    def one(i):
        with batched.client() as client:
            barrier.wait()  # all at once: their prefills take turns with the decode steps, so rows join while others decode
            return _answer(client, *requests[i])

    with cf.ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(one, range(len(requests))))
    assert concurrent == sequential
    steps, multi = _batch_steps(batched)
    assert multi - multi_before > 0  # some steps really ran several rows
    assert batched.metric("steerc_decode_batch_rows") == 0 and batched.metric("steerc_decode_batch_waiting") == 0


def test_a_stream_that_leaves_and_a_failing_request_do_not_disturb_the_others(batched, tmp_path):
    with batched.client() as c:
        context_id = c.post("/v1/contexts", json={"context": CONTEXT + " (failing test)"}).json()["id"]
        requests = _mixed(context_id)[:6]
        sequential = [_answer(c, path, body) for path, body in requests]
    leaving = ("/v1/completions", {"prompt": "1, 2, 3, 4,", "max_tokens": 200, "temperature": 0, "stream": True})
    unknown = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Who won?"}], "steer": {"context_id": "ctx-" + "0" * 64}})
    too_long = ("/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 300})
    barrier = threading.Barrier(len(requests) + 3)

    def one(request, **kwargs):
        with batched.client() as client:
            barrier.wait()
            return _answer(client, *request, **kwargs)

    def refused(request):
        with batched.client() as client:
            barrier.wait()
            return client.post(request[0], json=request[1])

    with cf.ThreadPoolExecutor(len(requests) + 3) as pool:
        answers = [pool.submit(one, r) for r in requests]
        left = pool.submit(one, leaving, leave_after_first=True)
        failed = [pool.submit(refused, unknown), pool.submit(refused, too_long)]
        assert [a.result() for a in answers] == sequential
        assert left.result() == "left"
    assert failed[0].result().status_code == 404 and "unknown context id" in failed[0].result().json()["error"]["message"]
    assert failed[1].result().status_code == 400 and failed[1].result().json()["error"]["code"] == "context_length_exceeded"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and batched.metric("steerc_decode_batch_rows"):
        time.sleep(0.1)
    assert batched.metric("steerc_decode_batch_rows") == 0  # the stream that left freed its row


# -- the decode loop itself ------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return Engine.load(tiny_engine)


def test_batcher_generate_equals_generate_and_a_bad_row_fails_alone(engine):
    batcher = Batcher(engine, 4)
    steps = []
    batcher.on_step = steps.append
    prompts = [np.random.default_rng(seed).integers(0, 128, (1, n)) for seed, n in ((1, 5), (2, 9), (3, 3))]
    want = [[int(t[0]) for t in generate(engine, p, max_new_tokens=12, stop_token_ids=set())] for p in prompts]
    g = engine.geometry
    bad = BatchRow(np.zeros(8, np.float32), KVCache.empty(g.num_layers + 1, 1, g.num_kv_heads, g.head_dim), emit=lambda t: None)
    failures = []
    bad.fail = failures.append
    prefilled = [prefill(engine, p, np.ones(p.shape, np.int64), engine.new_cache(1)) for p in prompts]
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            with engine.gate:  # no step runs until all three rows are in: they must share steps
                runs = [pool.submit(lambda p, f: [int(t[0]) for t in batcher.generate(engine, p, max_new_tokens=12, stop_token_ids=set(), prefilled=f)], p, f)
                        for p, f in zip(prompts, prefilled)]
                batcher.submit(bad)
                time.sleep(0.5)
            got = [r.result() for r in runs]
    finally:
        batcher.stop()
    assert got == want
    assert len(failures) == 1 and "does not fit engine" in str(failures[0])
    assert max(steps) > 1  # the three rows shared steps


def test_batcher_generate_honours_prefilled_sampling_and_check(engine):
    batcher = Batcher(engine, 2)
    prompt = np.random.default_rng(5).integers(0, 128, (1, 6))
    sampling = SamplingParams(temperature=1.0, seed=11)
    try:
        logits, cache = prefill(engine, prompt, np.ones((1, 6), np.int64), engine.new_cache(1))
        want = [int(t[0]) for t in generate(engine, prompt, max_new_tokens=8, sampling=sampling, stop_token_ids=set())]
        got = [int(t[0]) for t in batcher.generate(engine, prompt, max_new_tokens=8, sampling=sampling, stop_token_ids=set(), prefilled=(logits, cache))]
        assert got == want

        def stop():
            raise TimeoutError("deadline")

        batcher.batch.max_rows = 0  # no room: the row waits, and its check runs while it does
        with pytest.raises(TimeoutError):
            list(batcher.generate(engine, prompt, max_new_tokens=4, check=stop))
        assert batcher.waiting == 0  # withdrawn from the queue
    finally:
        batcher.stop()


def test_fair_lock_serves_waiters_in_order():
    lock, order = FairLock(), []
    lock.__enter__()
    threads = []
    for i in range(4):
        t = threading.Thread(target=lambda i=i: (lock.__enter__(), order.append(i), lock.__exit__()))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # each one queued before the next
    lock.__exit__()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]
