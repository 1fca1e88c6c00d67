"""A steering method is one file plus one registry line: a toy method, defined and registered
inside the test, shows up in ``steerc run --help``, ``steerc eval --methods`` and the server's
OpenAPI schema, its option's limit holds on the command line and over HTTP, and a config of it
round-trips through JSON."""

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from steerc.errors import SteercError
from steerc.steering.config import SteerConfig
from steerc.steering.methods.none import NoSteering
from steerc.steering.options import MethodOptions, option
from steerc.steering.registry import get_method, method_names, register_method


# -- the whole method: its options and its class (the "one file") --------------------------------
@dataclass(frozen=True)
class ToyOptions(MethodOptions):
    """The toy's one setting."""

    toy_gain: float = option(1.0, "number", "how much the toy amplifies (a made-up option)", gt=0, le=10)


class Toy(NoSteering):
    name = "toy"
    summary = "a toy method, registered by a test"
    options = ToyOptions


@pytest.fixture
def toy():
    with register_method("toy", Toy):  # the "one registry line"
        yield get_method("toy")
    assert "toy" not in method_names()


def _help(*argv: str) -> str:
    from steerc.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(out.getvalue().split())


def test_a_registered_method_is_a_config_that_round_trips(toy):
    config = SteerConfig(method="toy", alpha=0.3, options=ToyOptions(toy_gain=2.5))
    assert SteerConfig.from_json(config.to_json()) == config and config.to_dict()["toy_gain"] == 2.5
    assert SteerConfig(method="toy", alpha=0.3, toy_gain=2.5) == config
    assert SteerConfig.from_dict({"method": "toy", "toy_gain": 2.5, "alpha": 0.3}) == config
    with pytest.raises(ValueError, match=r"toy_gain must be a number > 0 and <= 10, got 11"):
        ToyOptions(toy_gain=11)
    with pytest.raises(ValueError, match="toy_gain is an option of method 'toy', not of 'query'"):
        SteerConfig(method="query", toy_gain=2.0)
    assert config.band == "last-third" and get_method("toy").key_fields(config) == {"method": "none"}
    with pytest.raises(ValueError, match="already"):
        register_method("toy", Toy)


def test_a_registered_method_appears_in_the_cli(toy):
    run = _help("run")
    assert "{none,query,qllm,llmsteer,pasta,autopasta,toy}" in run  # --method's choices
    assert "--toy-gain TOY_GAIN toy: how much the toy amplifies (a made-up option) (default: 1.0)" in run
    evaluate = _help("eval")
    assert "toy: a toy method, registered by a test" in evaluate and "--toy-gain" in evaluate
    assert "--toy-gain" in _help("serve")


def test_the_cli_enforces_the_option_limit(toy, tmp_path):
    from steerc.cli import build_parser, main
    from steerc.cli.steer_options import steer_config
    from steerc.eval import method_variants

    context = tmp_path / "c.txt"
    context.write_text("Paris is the capital of France.")
    parse = lambda *extra: build_parser().parse_args(["run", "ENGINE", "--context", str(context), "--query", "q", *extra])  # noqa: E731
    assert steer_config(parse("--method", "toy", "--toy-gain", "4")) == SteerConfig(method="toy", toy_gain=4.0)
    with pytest.raises(SteercError, match=r"invalid option: toy_gain must be a number > 0 and <= 10, got 20.0"):
        steer_config(parse("--method", "toy", "--toy-gain", "20"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(tmp_path / "no-engine"), "--context", str(context), "--query", "q", "--method", "toy", "--toy-gain", "0"])
    assert code == 2
    assert err.getvalue().strip().splitlines() == ["steerc: error: invalid option: toy_gain must be a number > 0 and <= 10, got 0.0"]
    # steerc eval --methods: validated against the registry, each method with its own options
    variants = method_variants(["none", "toy"], SteerConfig(method="none"), {"toy_gain": 3.0, "evidence": 2})
    assert [v.config for v in variants] == [SteerConfig(method="none"), SteerConfig(method="toy", toy_gain=3.0)]
    with pytest.raises(SteercError, match="unknown method"):
        method_variants(["toy", "magic"])


def test_a_registered_method_appears_in_the_server_schema_and_limits(toy, tiny_text_engine):
    from fastapi.testclient import TestClient

    from steerc.runtime.engine import Engine
    from steerc.server.app import create_app
    from steerc.server.settings import ServerSettings
    from steerc.stores import MemoryStore

    app = create_app(Engine.load(tiny_text_engine), ServerSettings(), MemoryStore(1 << 28))
    schemas = app.openapi()["components"]["schemas"]
    steer = schemas["SteerOptions"]["properties"] if "SteerOptions" in schemas else schemas["ContextRequest"]["properties"]
    assert "toy" in steer["method"]["anyOf"][0]["enum"]
    gain = next(t for t in steer["toy_gain"]["anyOf"] if t.get("type") == "number")
    assert gain["exclusiveMinimum"] == 0 and gain["maximum"] == 10
    context = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:300]
    with TestClient(app) as client:
        bad = client.post("/v1/contexts", json={"context": context, "method": "toy", "toy_gain": 11})
        assert bad.status_code == 400 and "toy_gain" in bad.json()["error"]["message"], bad.text
        good = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Who won?"}], "max_tokens": 2,
                                                         "temperature": 0, "steer": {"context": context, "method": "toy", "toy_gain": 2}})
        assert good.status_code == 200, good.text
        assert good.json()["steer"]["method"] == "toy" and good.json()["steer"]["config"]["toy_gain"] == 2
        other = client.post("/v1/contexts", json={"context": context, "method": "none", "toy_gain": 2})
        assert other.status_code == 400 and "toy_gain is an option of method 'toy'" in other.json()["error"]["message"], other.text


def test_the_schema_is_made_when_the_app_is_built():
    from steerc.server.schemas import request_models

    assert "toy_gain" not in request_models().steer.model_fields
    with register_method("toy", Toy):
        models = request_models()
        assert "toy_gain" in models.steer.model_fields and "toy_gain" in models.context.model_fields
    assert "toy_gain" not in request_models().steer.model_fields and "toy" not in method_names()
