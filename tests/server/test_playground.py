"""The playground (``GET /``) in a real browser: Playwright driving Debian's chromium against
`steerc serve` on the tiny text engine (with an API key).

Missing chromium or Playwright: the browser tests skip, or fail when STEERC_REQUIRE_BROWSER is
set (`make test` sets it and installs chromium). What the page shows is compared with what the
API answers for the same request (greedy decoding, so the same text and the same evidence).
"""

import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, Server

from steerc.server.bodies import request_bodies
from steerc.server.routes import build_router
from steerc.server.routes.ui import ASSETS, CSP
from steerc.server.settings import ServerSettings

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
QUESTIONS = ("Which team won Super Bowl 50?", "Where was Super Bowl 50 played?")
MAX_TOKENS = 8  # what the tests type into the page's "Max tokens"
MARKUP = ('Plain words first. <script>window.__pwned = "script";</script> A picture follows. '
          '<img src="x" onerror="window.__pwned = \'img\'"> And a last sentence with <b>bold</b> tags.')


def _require(message: str):
    if os.environ.get("STEERC_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the module (each test opens its own tab: a fresh key and history)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("playwright is not installed (pip install -e '.[dev]')")
    executable = shutil.which("chromium")
    if executable is None:
        _require("chromium is not installed (Debian: apt-get install chromium; `make test` installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])  # the tests may run as root
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui_server(tiny_text_engine, tmp_path_factory):
    """Its own server, so the listing holds only this module's contexts."""
    srv = Server(tiny_text_engine, tmp_path_factory.mktemp("playground"), "--max-concurrency", "4")
    yield srv
    srv.stop()


class Tab:
    """One browser tab on the playground, with every request it made and every page error."""

    def __init__(self, browser, server: Server):
        self.server = server
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.response = self.page.goto(server.url + "/")
        self.page.wait_for_selector("body[data-ready]")

    def status(self) -> str:
        return self.page.text_content("#status")

    def use_key(self, key: str, expect: str = "connected") -> None:
        self.page.fill("#key", key)
        self.page.click("#key-form button")
        self.page.wait_for_function("want => document.getElementById('status').textContent.startsWith(want)", arg=expect)

    def register(self, text: str) -> str:
        self.page.fill("#context-text", text)
        self.page.click("#register")
        self.page.wait_for_selector("[data-fact=registration]")
        return self.page.text_content("[data-fact=id]")

    def ask(self, question: str, method: str = "query") -> None:
        done = self.page.locator("#history li button").count() + 1
        self.page.select_option("#method", method)
        self.page.fill("#max-tokens", str(MAX_TOKENS))
        self.page.fill("#question", question)
        self.page.click("#ask")
        self.page.wait_for_function("n => document.querySelectorAll('#history li button').length === n", arg=done)

    def answer(self, slot: str) -> dict:
        card = f"#answer-{slot}"
        stats = {el.get_attribute("data-fact"): el.text_content() for el in self.page.query_selector_all(f"{card} [data-fact]")}
        return {"title": self.page.text_content(f"{card} h3"), "text": self.page.text_content(f"{card} .text"), **stats}

    def units(self) -> list[dict]:
        return [{"unit": int(el.get_attribute("data-unit")), "share": float(el.get_attribute("data-share")), "text": el.text_content(),
                 "chosen": "chosen" in el.get_attribute("class").split(), "title": el.get_attribute("title")}
                for el in self.page.query_selector_all("#context-view .unit")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, ui_server):
    t = Tab(browser, ui_server)
    yield t
    t.close()


def _api_answer(server: Server, context_id: str, question: str, method: str) -> dict:
    """The same request the page sends, without streaming."""
    with server.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, "temperature": 0,
                                                 "steer": {"context_id": context_id, "method": method}})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_page_asks_for_the_key_registers_a_context_and_the_second_question_reuses_it(tab, ui_server):
    assert not tab.page.is_hidden("#key-form")  # the server wants a key: the page asks for it
    tab.use_key(API_KEY)
    assert tab.page.input_value("#key") == ""  # the key is not left in the page
    context_id = tab.register(CONTEXT)
    with ui_server.client() as c:
        record = c.get(f"/v1/contexts/{context_id}").json()
    assert tab.page.text_content("[data-fact=context_tokens]") == str(record["context_tokens"])
    assert tab.page.text_content("[data-fact=cached]").startswith("yes")
    assert tab.page.locator(f"#contexts li[data-id='{context_id}']").count() == 1  # the listing shows it

    for question in QUESTIONS:
        tab.ask(question)
    steered, none = tab.answer("steered"), tab.answer("none")
    assert steered["context_prefill_tokens"] == "0" and none["context_prefill_tokens"] == "0"  # the second question reused the context
    assert steered["title"] == "query (steered)" and none["title"] == "none (unsteered)"
    # Both answers are there, and they are the API's
    assert steered["text"] == _api_answer(ui_server, context_id, QUESTIONS[1], "query")["choices"][0]["message"]["content"]
    assert none["text"] == _api_answer(ui_server, context_id, QUESTIONS[1], "none")["choices"][0]["message"]["content"]
    for card in (steered, none):
        assert card["completion_tokens"].split()[0].isdigit() and card["ttft_ms"].endswith(" ms") and card["context"].startswith("reused")
    history = tab.page.locator("#history li button")
    assert history.all_text_contents() == list(QUESTIONS)  # the history of this context, oldest first
    history.first.click()  # shows the first question's answers again
    assert tab.page.text_content("#answer-steered .text") == _api_answer(ui_server, context_id, QUESTIONS[0], "query")["choices"][0]["message"]["content"]
    assert tab.errors == []


def test_the_shading_is_the_api_evidence_distribution(tab, ui_server):
    tab.use_key(API_KEY)
    context_id = tab.register(CONTEXT)
    tab.ask(QUESTIONS[0])
    steer = _api_answer(ui_server, context_id, QUESTIONS[0], "query")["steer"]
    d = steer["distribution"]
    units = tab.units()
    assert len(units) == len(d["shares"]) >= 2
    assert [u["share"] for u in units] == d["shares"]
    assert [u["text"] for u in units] == [CONTEXT[a:b] for a, b in d["spans"]]
    assert {u["unit"] for u in units if u["chosen"]} == {e["unit"] for e in steer["evidence"]}  # the chosen units are outlined
    for e in steer["evidence"]:
        assert units[e["unit"]]["share"] == e["score"] and CONTEXT[e["start"] : e["end"]] == units[e["unit"]]["text"]
    best = max(units, key=lambda u: u["share"])
    tab.page.hover(f"#context-view .unit[data-unit='{best['unit']}']")
    assert f"share {100 * best['share']:.1f}%" in tab.page.text_content("#hover")  # hovering a unit shows its share
    assert float(tab.page.get_attribute("#steering-summary", "data-alpha-applied")) == d["alpha_applied"]  # the strength applied
    assert f"alpha applied {d['alpha_applied']:g}" in tab.page.text_content("#steering-summary")


def test_the_method_picker_is_the_servers_schema(tab, ui_server):
    schema = httpx.get(ui_server.url + "/openapi.json").json()["components"]["schemas"]["SteerRequest"]["properties"]
    methods = next(a for a in schema["method"]["anyOf"] if a.get("enum"))["enum"]
    assert tab.page.eval_on_selector_all("#method option", "os => os.map(o => o.value)") == methods
    assert tab.page.input_value("#method") == "query"

    def shown() -> set:
        return set(tab.page.eval_on_selector_all("#options [data-option]", "xs => xs.map(x => x.dataset.option)"))

    assert shown() >= {"alpha", "evidence", "hedge", "min_share"} and "top_k" not in shown()
    tab.page.select_option("#method", "llmsteer")
    assert shown() == {"alpha", "top_k"}  # llmsteer's own option (x-methods) and the strength
    assert {n for n, p in schema.items() if "llmsteer" in p.get("x-methods", ())} == {"top_k"}


def test_an_option_from_the_form_reaches_the_server(tab, ui_server):
    tab.use_key(API_KEY)
    context_id = tab.register(CONTEXT)
    tab.page.select_option("#method", "query")
    tab.page.select_option("#options [data-option=hedge]", "off")
    tab.page.fill("#options [data-option=evidence]", "2")
    sent = []
    tab.page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    tab.ask(QUESTIONS[0])
    assert sorted(body["steer"]["method"] for body in sent) == ["none", "query"]
    steered = next(body["steer"] for body in sent if body["steer"]["method"] == "query")
    assert steered == {"context_id": context_id, "method": "query", "hedge": "off", "evidence": 2}  # typed: 2 is a number
    assert "hedge off" in tab.page.text_content("#steering-summary")
    with ui_server.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": MAX_TOKENS, "temperature": 0,
                                                 "steer": steered}).json()
    units = tab.units()
    assert [u["share"] for u in units] == r["steer"]["distribution"]["shares"]
    assert {u["unit"] for u in units if u["chosen"]} == {e["unit"] for e in r["steer"]["evidence"]}


def test_a_wrong_key_shows_the_servers_message(tab, ui_server):
    message = httpx.get(ui_server.url + "/v1/models", headers={"Authorization": "Bearer wrong-key-000000"}).json()["error"]["message"]
    tab.use_key("wrong-key-000000", expect=message[:20])
    assert tab.status() == message and "error" in tab.page.get_attribute("#status", "class")
    tab.use_key(API_KEY)  # and the right one works
    assert tab.status().startswith("connected")


def test_a_context_with_markup_is_shown_as_text_and_no_script_runs(tab):
    tab.use_key(API_KEY)
    tab.register(MARKUP)
    tab.ask("What follows?")
    view = tab.page.locator("#context-view")
    assert view.text_content() == MARKUP  # every character, as text
    assert "<script>" in "".join(u["text"] for u in tab.units())
    assert tab.page.locator("#context-view script, #context-view img, #context-view b, #contexts img, #contexts script").count() == 0
    assert tab.page.evaluate("window.__pwned") is None
    assert tab.page.locator("#contexts li", has_text="<img").count() >= 1  # the listing's preview, as text too
    assert tab.errors == []


def test_the_page_talks_to_no_other_origin(tab, ui_server):
    headers = tab.response.headers
    assert headers["content-security-policy"] == CSP and "default-src 'self'" in CSP and "unsafe-inline" not in CSP
    tab.use_key(API_KEY)
    context_id = tab.register(CONTEXT)
    tab.ask(QUESTIONS[0])
    tab.page.click("#refresh")
    tab.page.locator(f"#contexts li[data-id='{context_id}']").wait_for()
    paths = {r.removeprefix(ui_server.url) for r in tab.requests}
    assert {"/", "/ui/app.js", "/ui/app.css", "/openapi.json", "/v1/models", "/v1/contexts", "/v1/chat/completions"} <= paths  # the log saw the page work
    assert [r for r in tab.requests if not r.startswith(ui_server.url + "/")] == []


def test_the_page_is_static_files_outside_the_api_schema(ui_server):
    r = httpx.get(ui_server.url + "/")  # open, like /health: the page asks for the key itself
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and r.headers["content-security-policy"] == CSP
    assert "<script>" not in r.text and 'src="/ui/app.js"' in r.text and "http" not in r.text.split("<body>")[0]  # no inline script, nothing from elsewhere
    for path, (_, media_type) in ASSETS.items():
        assert httpx.get(ui_server.url + path).headers["content-type"] == media_type
    paths = httpx.get(ui_server.url + "/openapi.json").json()["paths"]
    assert not set(ASSETS) & set(paths)


@pytest.mark.parametrize("ui", [True, False])
def test_no_ui_leaves_the_page_out(ui):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.include_router(build_router(request_bodies(), ui=ui))
    with TestClient(app) as client:
        for path in ASSETS:
            assert client.get(path).status_code == (200 if ui else 404)

def test_the_ui_setting_is_a_boolean():
    assert ServerSettings().ui is True and ServerSettings(ui=False).ui is False
    with pytest.raises(ValueError, match="ui must be true or false"):
        ServerSettings(ui="no")
