"""Bad requests get the right status and an OpenAI-shaped error that says what is wrong."""

import httpx
import pytest

from test_api import CONTEXT

GOOD_ID = "ctx-" + "0" * 64
LONG = " ".join(["word"] * 600)  # about 600 tokens; the tiny engine allows 384

# (case, method, path, json body or raw bytes, status, code, words the message must contain)
CASES = [
    ("malformed JSON", "POST", "/v1/completions", b'{"prompt": "x",', 400, None, "not valid JSON"),
    ("body not an object", "POST", "/v1/completions", b'["x"]', 400, None, "JSON object"),
    ("Latin-1 body", "POST", "/v1/completions", '{"prompt": "café"}'.encode("latin-1"), 400, None, "byte 0xe9 at offset 15 is not valid UTF-8"),
    ("UTF-16 body", "POST", "/v1/completions", '{"prompt": "x"}'.encode("utf-16-le"), 400, None, "not UTF-8 (NUL byte at offset 1)"),
    ("binary body", "POST", "/v1/completions", bytes(range(256)), 400, None, "send JSON encoded as UTF-8"),
    ("missing prompt", "POST", "/v1/completions", {"max_tokens": 3}, 400, None, "prompt: Field required"),
    ("max_tokens wrong type", "POST", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, None, "max_tokens: Input should be a valid integer"),
    ("negative max_tokens", "POST", "/v1/completions", {"prompt": "x", "max_tokens": -5}, 400, None, "max_tokens: Input should be greater than or equal to 1"),
    ("temperature out of range", "POST", "/v1/completions", {"prompt": "x", "temperature": 3}, 400, None, "temperature"),
    ("n > 1", "POST", "/v1/completions", {"prompt": "x", "n": 2}, 400, None, "supports only the default"),
    ("unknown field", "POST", "/v1/completions", {"prompt": "x", "max_tokenz": 3}, 400, None, "max_tokenz: unknown field"),
    ("empty messages", "POST", "/v1/chat/completions", {"messages": []}, 400, None, "messages"),
    ("bad role", "POST", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, None, "role"),
    ("unknown model", "POST", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found", "not served here"),
    ("unknown context id", "POST", "/v1/completions", {"prompt": "x", "steer": {"context_id": GOOD_ID}}, 404, "context_not_found", "POST /v1/contexts"),
    ("malformed context id", "GET", "/v1/contexts/not-an-id", None, 404, "context_not_found", "64 hex"),
    ("context and context_id", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": "a", "context_id": GOOD_ID}}, 400, None, "exactly one"),
    ("alpha out of range", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": "a b", "alpha": 0}}, 400, None, "steer.alpha"),
    ("layer beyond the engine", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "layers": [7]}}, 400, None, "outside the engine"),
    ("pasta without highlights", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "method": "pasta"}}, 400, None, "needs highlights"),
    ("steered chat with a system message", "POST", "/v1/chat/completions",
     {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "steer": {"context": CONTEXT}}, 400, None, "one user message"),
    ("unknown method", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "method": "magic"}}, 400, None, "steer.method"),
    ("no evidence units", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "method": "query", "evidence": 0}}, 400, None,
     "steer.evidence"),
    ("selector head beyond the engine", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "method": "query", "selector": [[5, 0]]}},
     400, None, "selector head [5, 0] is outside the engine"),
    ("unknown hedging mode", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "hedge": "bogus"}}, 400, None, "steer.hedge"),
    ("negative alpha", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "alpha": -1}}, 400, None, "steer.alpha"),
    ("negative sharpness", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "steer": {"context": CONTEXT, "sharpness": -1}},
     400, None, "steer.sharpness"),
    ("min_share above 1", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "min_share": 1.5}}, 400, None, "steer.min_share"),
    ("self_check above 1", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "self_check": 2}}, 400, None, "steer.self_check"),
    ("self_check with the lexical ranking", "POST", "/v1/completions",
     {"prompt": "x", "steer": {"context": CONTEXT, "rank_by": "lexical", "self_check": 0.5}}, 400, None, "self_check compares against"),
    ("autopasta registration", "POST", "/v1/contexts", {"context": CONTEXT, "method": "autopasta"}, 400, None, "per question"),
    ("keep of zero", "POST", "/v1/contexts", {"context": CONTEXT, "keep": 0}, 400, None, "keep"),
    ("keep above the context", "POST", "/v1/contexts", {"context": CONTEXT, "keep": 5000}, 400, None, "more than the context's"),
    ("unknown block mask", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": CONTEXT, "method": "qllm", "block_mask": "medium"}}, 400, None,
     "steer.block_mask"),
    ("context over the limit", "POST", "/v1/contexts", {"context": LONG}, 400, "context_length_exceeded", "at most 384"),
    ("steered context over the limit", "POST", "/v1/completions", {"prompt": "x", "steer": {"context": LONG}}, 400, "context_length_exceeded", "at most 384"),
    ("prompt + max_tokens over the limit", "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1000}, 400, "context_length_exceeded", "at most 384"),
    ("oversized body", "POST", "/v1/completions", {"prompt": "x" * 70000}, 413, "request_too_large", "65536 bytes"),
    ("unknown route", "POST", "/v1/embeddings", {"input": "x"}, 404, "not_found", "no route"),
    ("wrong method", "GET", "/v1/completions", None, 405, None, "not allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_error(server, case):
    _, method, path, body, status, code, words = case
    with server.client() as c:
        if isinstance(body, bytes):
            r = c.request(method, path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = c.request(method, path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert words in error["message"], error["message"]


def test_form_encoded_body_is_told_to_send_json(server):
    r = httpx.post(server.url + "/v1/completions", content=b"prompt=x", headers={**server.headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]


def test_body_limit_holds_without_a_content_length(server):
    """A chunked upload is counted as it arrives."""
    def chunks():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers={**server.headers, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_openai_client_raises_typed_errors(server):
    import openai

    client = server.openai()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="engine", prompt="x", max_tokens=-1)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="x")


def test_the_server_still_answers_after_bad_input(server):
    with server.client() as c:
        r = c.post("/v1/completions", json={"prompt": "Still alive?", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200
