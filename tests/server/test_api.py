"""The HTTP API against a running `steerc serve` (tiny random Llama with the SmolLM2 tokenizer):
OpenAI shapes through httpx and the official openai client, streaming, context registration
and reuse, auth, metrics."""

import json
from pathlib import Path

import httpx
import openai
import pytest

from steerc.steering.config import SteerConfig

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
QUESTION = "Which team won Super Bowl 50?"


def _sse(text: str) -> list:
    """The data payloads of a server-sent-event stream (``[DONE]`` kept as a string)."""
    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_needs_no_key_and_models_lists_the_engine(server):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    with server.client() as c:
        models = c.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "engine" and models["data"][0]["max_model_len"] == 384


def test_completion_has_the_openai_shape(server):
    with server.client() as c:
        r = c.post("/v1/completions", json={"model": "engine", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "engine"
    choice = body["choices"][0]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"} and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 6 and usage["prompt_tokens"] > 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "steer" not in body


def test_openai_client_completion_chat_and_streams_agree(server):
    client = server.openai()
    done = client.completions.create(model="engine", prompt="Once upon a time", max_tokens=10, temperature=0)
    with server.client() as c:
        raw = c.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}).json()
    assert done.choices[0].text == raw["choices"][0]["text"]
    streamed = list(client.completions.create(model="engine", prompt="Once upon a time", max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    assert streamed[-1].choices[0].finish_reason == done.choices[0].finish_reason

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model="engine", messages=messages, max_tokens=8, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="engine", messages=messages, max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_raw_stream_is_server_sent_events_ending_in_done(server):
    with server.client() as c:
        r = c.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(e["id"] == events[0]["id"] for e in events[:-1])


def test_seeded_sampling_is_reproducible(server):
    body = {"prompt": "Numbers:", "max_tokens": 12, "temperature": 0.9, "seed": 7}
    with server.client() as c:
        first, second = (c.post("/v1/completions", json=body).json()["choices"][0]["text"] for _ in range(2))
        other = c.post("/v1/completions", json={**body, "seed": 8}).json()["choices"][0]["text"]
    assert first == second and first != other


def test_context_registration_and_reuse(server):
    context = CONTEXT + " (registration test)"
    with server.client() as c:
        reg = c.post("/v1/contexts", json={"context": context, "method": "llmsteer"})
        assert reg.status_code == 200, reg.text
        info = reg.json()
        assert info["id"].startswith("ctx-") and info["cache"] == "miss" and info["cached"]
        assert info["context_prefill_tokens"] > 2 * info["context_tokens"]  # LLMSteer: the context behind each of two prefixes
        assert 0 < info["selected_tokens"] < info["context_tokens"] and info["config"]["method"] == "llmsteer"

        ask = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0, "steer": {"context_id": info["id"]}}
        first = c.post("/v1/chat/completions", json=ask).json()
        second = c.post("/v1/chat/completions", json=ask).json()
        for r in (first, second):  # the context is prepared: only the question is prefilled
            assert r["steer"]["cache"] == "memory" and r["steer"]["context_prefill_tokens"] == 0 and r["steer"]["context_id"] == info["id"]
        assert first["choices"] == second["choices"]
        assert first["usage"]["prompt_tokens"] > info["context_tokens"]

        inline = c.post("/v1/chat/completions", json={**ask, "steer": {"context": context, "method": "llmsteer"}}).json()
        assert inline["steer"]["cache"] == "memory" and inline["choices"] == first["choices"]  # same text and config: the same entry

        again = c.post("/v1/contexts", json={"context": context, "method": "llmsteer"}).json()
        assert again["id"] == info["id"] and again["cache"] == "memory" and again["context_prefill_tokens"] == 0

        got = c.get(f"/v1/contexts/{info['id']}").json()
        assert got["id"] == info["id"] and got["context_tokens"] == info["context_tokens"] and got["context_preview"] == context[:200]
        assert "context" not in got

        deleted = c.delete(f"/v1/contexts/{info['id']}").json()
        assert deleted["deleted"] and deleted["entries_removed"] == 3  # prepared KV, plain KV, importance
        assert c.get(f"/v1/contexts/{info['id']}").status_code == 404
        gone = c.post("/v1/chat/completions", json=ask)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "context_not_found"
        assert c.delete(f"/v1/contexts/{info['id']}").status_code == 404


def test_other_steering_of_a_registered_context_costs_no_prefill(server):
    """alpha/top_k/layers per request: a new entry, built from the stored analysis (steer_at decode)."""
    with server.client() as c:
        info = c.post("/v1/contexts", json={"context": CONTEXT + " (override test)", "top_k": 0.3, "method": "llmsteer"}).json()
        r = c.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 4, "temperature": 0,
                                            "steer": {"context_id": info["id"], "alpha": 0.5, "layers": "all"}}).json()
    assert r["steer"]["cache"] == "miss" and r["steer"]["context_prefill_tokens"] == 0
    assert r["steer"]["config"]["alpha"] == 0.5 and r["steer"]["config"]["top_k"] == 0.3  # override on top of the registered config


def test_steered_answer_equals_the_runtime(server, tiny_text_engine):
    """The server answers through the same Steerer as `steerc run` (and its default store, int8
    KVs at rest): identical greedy text."""
    from steerc.runtime import Engine
    from steerc.steering.answer import Steerer
    from steerc.steering.config import SteerConfig
    from steerc.stores import MemoryStore

    engine = Engine.load(tiny_text_engine)
    for method, extra in (("llmsteer", {}), ("none", {}), ("pasta", {"highlights": [[0, 120]]}), ("query", {"selector": [[1, 0], [1, 3]]})):
        config = SteerConfig(method=method, **{k: tuple(map(tuple, v)) for k, v in extra.items()})
        store = MemoryStore()
        store.kv_scheme = "int8"
        expected = Steerer(engine, config, store).answer(CONTEXT, QUESTION, max_new_tokens=8)
        with server.client() as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0,
                                                     "steer": {"context": CONTEXT, "method": method, **extra}}).json()
        text = r["choices"][0]["message"]["content"]
        assert text.strip() == expected.text and r["usage"]["completion_tokens"] == len(expected.token_ids), method
        assert r["steer"]["selected_tokens"] == expected.selected_tokens
        assert r["steer"]["evidence"] == [e.to_dict() for e in expected.evidence]
        assert r["steer"].get("distribution") == (expected.distribution.to_dict() if method == "query" else None), method


def _check_distribution(steer: dict, hedge: str) -> None:
    """``steer.distribution``: every unit's share (summing to 1), strength and character range, the top shares, the alpha applied."""
    d = steer["distribution"]
    assert set(d) == {"kind", "shares", "strength", "top", "alpha_applied", "hedge", "backed_off", "spans"} and d["hedge"] == hedge and d["backed_off"] is False
    assert len(d["spans"]) == len(d["shares"]) and all(0 <= a < b for a, b in d["spans"]) and d["spans"] == sorted(d["spans"])
    assert len(d["shares"]) == len(d["strength"]) >= 2 and sum(d["shares"]) == pytest.approx(1, abs=1e-3) and all(0 <= x <= 1 for x in d["strength"])
    assert d["top"][0]["share"] == max(d["shares"]) and d["kind"] == "sentence"
    assert 0 < d["alpha_applied"] <= 1 and (d["alpha_applied"] < 1) == (bool(steer["evidence"]) and max(d["strength"]) > 0)  # steered towards a pick
    for e in steer["evidence"]:
        assert d["shares"][e["unit"]] == e["score"] and d["spans"][e["unit"]] == [e["start"], e["end"]]


def test_query_steering_of_a_registered_context_reports_its_evidence(server):
    """method query: registered once (plain KV + evidence index), then each question costs only its own prefill."""
    context = CONTEXT + " (query test)"
    with server.client() as c:
        info = c.post("/v1/contexts", json={"context": context, "method": "query"}).json()
        assert info["cache"] == "miss" and info["config"]["method"] == "query" and info["context_prefill_tokens"] >= info["context_tokens"]
        for question in (QUESTION, "Where was the game played?"):
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}], "max_tokens": 4, "temperature": 0,
                                                     "steer": {"context_id": info["id"], "evidence": 2}}).json()
            steer = r["steer"]
            assert steer["cache"] == "memory" and steer["context_prefill_tokens"] == 0 and steer["config"]["evidence"] == 2
            assert len(steer["evidence"]) == 2 and all(context[e["start"] : e["end"]].startswith(e["preview"].split()[0]) for e in steer["evidence"])
            _check_distribution(steer, SteerConfig().options.hedge)
        deleted = c.delete(f"/v1/contexts/{info['id']}").json()
        assert deleted["deleted"] and deleted["entries_removed"] == 2  # the evidence index and the plain KV


@pytest.mark.parametrize("fields", [{"method": "none", "keep": 0.5}, {"method": "qllm", "block_size": 16, "blocks": 1, "local": 8}])
def test_compacted_and_block_retrieval_contexts_register_and_reuse(server, fields):
    """keep: the registration stores one compacted entry; qllm: a block index beside the plain KV. Both reuse without a prefill."""
    context = CONTEXT + f" ({fields['method']} test)"
    with server.client() as c:
        info = c.post("/v1/contexts", json={"context": context, **fields}).json()
        assert info["cache"] == "miss" and all(info["config"][k] == v for k, v in fields.items())
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0,
                                                 "steer": {"context_id": info["id"]}}).json()
        steer = r["steer"]
        assert steer["cache"] == "memory" and steer["context_prefill_tokens"] == 0 and r["choices"][0]["message"]["content"] is not None
        if fields["method"] == "qllm":
            assert len(steer["evidence"]) == 1 and steer["evidence"][0]["kind"] == "block"
        deleted = c.delete(f"/v1/contexts/{info['id']}").json()
        assert deleted["deleted"] and deleted["entries_removed"] == (1 if "keep" in fields else 2)


def test_steered_streaming_carries_statistics_at_the_end(server):
    with server.client() as c:
        r = c.post("/v1/completions", json={"prompt": [QUESTION, "Who lost?"], "max_tokens": 4, "temperature": 0, "stream": True,
                                            "steer": {"context": CONTEXT + " (stream test)"}})
    events = _sse(r.text)
    finals = [e for e in events[:-1] if e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["index"] for f in finals] == [0, 1]
    steer = finals[-1]["steer"]
    assert steer["cache"] == "miss" and steer["context_prefill_tokens"] > 0  # the first question prepared it, the second reused it
    _check_distribution(steer, SteerConfig().options.hedge)  # the default method, query: its distribution goes out in the stream's last chunk too
    assert "steer" not in finals[0]


def test_api_key_is_required_except_on_health(server):
    for path in ("/v1/models", "/metrics", "/v1/contexts/ctx-x"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong-key-123"})
    assert r.status_code == 401 and "wrong" in r.json()["error"]["message"]
    from openai import OpenAI

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="wrong-key-123", max_retries=0).models.list()


def test_metrics_are_prometheus_text(server):
    from prometheus_client.parser import text_string_to_metric_families

    with server.client() as c:
        c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0})
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("steerc_requests", "steerc_time_to_first_token_seconds", "steerc_generated_tokens", "steerc_decode_tokens_per_second",
                 "steerc_context_cache", "steerc_queue_depth", "steerc_requests_in_flight", "steerc_prefill_tokens", "steerc_cancelled_requests"):
        assert name in families, name
    ok = [s for s in families["steerc_requests"].samples if s.labels == {"route": "/v1/completions", "status": "200"} and s.name.endswith("_total")]
    assert ok and ok[0].value >= 1
    assert server.metric("steerc_time_to_first_token_seconds_count", route="/v1/completions") >= 1


def test_stop_strings_end_the_answer_before_them(server):
    with server.client() as c:
        full = c.post("/v1/completions", json={"prompt": "A list of things:", "max_tokens": 16, "temperature": 0}).json()["choices"][0]["text"]
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        cut = c.post("/v1/completions", json={"prompt": "A list of things:", "max_tokens": 16, "temperature": 0, "stop": [stop]}).json()["choices"][0]
        streamed = _sse(c.post("/v1/completions", json={"prompt": "A list of things:", "max_tokens": 16, "temperature": 0, "stop": stop, "stream": True}).text)
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["text"] for e in streamed[:-1]) == cut["text"]  # held-back text never leaks past the stop


def test_hedged_query_reports_the_same_distribution_streamed_or_not(server):
    body = {"messages": [{"role": "user", "content": "Where was the game played?"}], "max_tokens": 3, "temperature": 0,
            "steer": {"context": CONTEXT + " (hedge test)", "method": "query", "hedge": "soft", "sharpness": 2}}
    with server.client() as c:
        whole = c.post("/v1/chat/completions", json=body).json()
        streamed = _sse(c.post("/v1/chat/completions", json={**body, "stream": True}).text)
    _check_distribution(whole["steer"], "soft")
    last = [e for e in streamed[:-1] if e["choices"] and e["choices"][0]["finish_reason"]][-1]
    assert last["steer"]["distribution"] == whole["steer"]["distribution"] and whole["steer"]["config"]["hedge"] == "soft"
