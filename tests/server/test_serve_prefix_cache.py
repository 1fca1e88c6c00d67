"""Automatic prefix caching in `steerc serve`: a plain prompt that starts like an earlier one
(a shared system prompt, the earlier turns of a conversation) prefills only the rest, answers as
a server without the cache does, reports the reused tokens as OpenAI's
``usage.prompt_tokens_details.cached_tokens``, and never reuses another tenant's prompt."""

import httpx
import pytest
from conftest import Server, tenant_key_file

from test_api import CONTEXT

SYSTEM = "You answer questions about this passage. " + CONTEXT[:400]
KEY_A, KEY_B = "key-of-team-a-0001", "key-of-team-b-0002"


def _chat(messages, **extra) -> dict:
    return {"messages": messages, "max_tokens": 12, "temperature": 0, **extra}


def _ask(client: httpx.Client, body: dict) -> tuple[str, dict]:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["choices"][0]["message"]["content"], out["usage"]


@pytest.fixture(scope="module")
def servers(tiny_text_engine, tmp_path_factory):
    cached = Server(tiny_text_engine, tmp_path_factory.mktemp("prefix"), "--prefix-cache-mb", "64")
    plain = Server(tiny_text_engine, tmp_path_factory.mktemp("no-prefix"), "--prefix-cache-mb", "0")
    yield cached, plain
    cached.stop(), plain.stop()


def test_a_shared_system_prompt_is_prefilled_once_and_answers_do_not_change(servers):
    cached, plain = servers
    questions = ["Who won?", "Where was the game played?", "Which team lost?"]
    bodies = [_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]) for q in questions]
    with cached.client() as c, plain.client() as p:
        first_text, first = _ask(c, bodies[0])
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        reused = []
        for body in bodies[1:]:
            text, usage = _ask(c, body)
            reference, ref_usage = _ask(p, body)
            assert text == reference
            assert ref_usage["prompt_tokens_details"]["cached_tokens"] == 0  # the server without the cache
            assert 0.5 * usage["prompt_tokens"] < usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
            reused.append(usage["prompt_tokens_details"]["cached_tokens"])
        assert first_text == _ask(p, bodies[0])[0]
    assert cached.metric("steerc_prompt_cached_tokens_total") >= sum(reused)
    assert cached.metric("steerc_prefix_cache_entries") >= 1 and cached.metric("steerc_prefix_cache_bytes") > 0
    assert plain.metric("steerc_prompt_cached_tokens_total") == 0 and plain.metric("steerc_prefix_cache_entries") == 0


def test_a_conversations_next_turn_reuses_the_earlier_turns(servers):
    cached, plain = servers
    turn1 = [{"role": "user", "content": "Tell me about the Super Bowl. " + CONTEXT[:300]}]
    with cached.client() as c, plain.client() as p:
        answer, usage1 = _ask(c, _chat(turn1))
        turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And who lost?"}]
        text, usage2 = _ask(c, _chat(turn2, stream=False))
        assert usage2["prompt_tokens_details"]["cached_tokens"] >= usage1["prompt_tokens"] - 8  # the first turn's prompt (the template may re-cut its end)
        assert text == _ask(p, _chat(turn2))[0]


def test_streamed_completions_report_cached_tokens(servers):
    cached, _ = servers
    prompt = "Passage: " + CONTEXT[:500] + "\nQuestion:"
    with cached.client() as c:
        c.post("/v1/completions", json={"prompt": prompt + " who won?", "max_tokens": 4})
        with c.stream("POST", "/v1/completions", json={"prompt": prompt + " who lost?", "max_tokens": 4, "stream": True,
                                                       "stream_options": {"include_usage": True}}) as r:
            usage = [line for line in r.iter_lines() if '"usage":{' in line and '"prompt_tokens_details"' in line]
    assert usage and '"cached_tokens":0' not in usage[-1]


def test_tenants_never_reuse_each_others_prompts(tiny_text_engine, tmp_path):
    srv = Server(tiny_text_engine, tmp_path, "--api-keys", tenant_key_file(tmp_path, {"team-a": KEY_A, "team-b": KEY_B}), api_key=None)
    try:
        body = _chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who won?"}])
        ask = lambda key, b: srv.client(key).post("/v1/chat/completions", json=b).json()  # noqa: E731
        ask(KEY_A, body)
        other = _chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who lost?"}])
        assert ask(KEY_B, other)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # B never gets A's prefix (nor learns it from TTFT)
        assert ask(KEY_A, other)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    finally:
        srv.stop()
