"""The backend registry: every --backend choice, settings check and message comes from it; a toy
backend added by one class plus one registry entry is a --backend choice at compile and run time;
the old name torch-tensorrt is an alias with one deprecation warning."""

import logging
import re
from pathlib import Path

import pytest

import steerc.backends as registry
from steerc.backends import BACKENDS, BackendEntry, backend_choices, backend_names, canonical_name, get_backend
from steerc.backends.base import Backend
from steerc.cli import build_parser
from steerc.settings import CompileSettings

COMMANDS = ("compile", "run", "generate", "eval", "serve")


class ToyBackend(Backend):
    """A backend that builds nothing and runs the ONNX step graph: what a new backend adds."""

    name = "toy"
    stage = "toy"
    opened: list = []

    def build(self, program, folder: Path, settings) -> dict:
        return {"device": settings.device}

    def open_session(self, folder, manifest, device, threads=None, *, weights=None, shared_arena=False):
        ToyBackend.opened.append((Path(folder), device))
        return get_backend("onnx").open_session(folder, manifest, device, threads)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(BACKENDS, "toy", BackendEntry(f"{__name__}:ToyBackend", "a toy backend of the registry test", "Toy"))
    yield
    registry._loaded.pop("toy", None)


def _subparser(command: str):
    parser = build_parser()
    return next(a for a in parser._actions if a.choices and command in a.choices).choices[command]


def _choices(command: str) -> tuple:
    return tuple(next(a for a in _subparser(command)._actions if "--backend" in a.option_strings).choices)


def test_every_entry_imports_its_backend():
    for name, entry in BACKENDS.items():
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
        assert entry.summary and entry.label
    assert backend_names() == ("onnx", "aoti", "tensorrt")
    assert get_backend("onnx").onnx_step_graph and not get_backend("aoti").onnx_step_graph


def test_cli_choices_come_from_the_registry():
    for command in COMMANDS:
        assert _choices(command) == backend_choices() == ("onnx", "aoti", "tensorrt", "torch-tensorrt")


def test_one_name_at_compile_and_run_time(caplog):
    registry._warned.discard("torch-tensorrt")
    with caplog.at_level(logging.WARNING, logger="steerc.backends"):
        assert canonical_name("torch-tensorrt") == "tensorrt"
        assert canonical_name("torch-tensorrt") == "tensorrt"
        assert canonical_name("tensorrt") == "tensorrt"
    lines = [r.getMessage() for r in caplog.records if r.name == "steerc.backends"]
    assert lines == ["backend 'torch-tensorrt' is deprecated: it is called 'tensorrt' now (compile and run alike)"]
    assert get_backend("torch-tensorrt") is get_backend("tensorrt")


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match=re.escape("backend must be one of ('onnx', 'aoti', 'tensorrt'), got 'tvm'")):
        canonical_name("tvm")
    with pytest.raises(ValueError, match="backend must be one of"):
        CompileSettings(backend="tvm")


def test_old_settings_still_load():
    """Manifests of engines compiled with --backend torch-tensorrt record that name in their settings."""
    old = {**CompileSettings().to_dict(), "backend": "torch-tensorrt", "device": "cuda"}
    assert CompileSettings.from_dict(old).backend == "tensorrt"


def test_a_toy_backend_is_one_class_and_one_entry(toy, tiny_engine):
    for command in COMMANDS:
        assert "toy" in _choices(command)
        assert "a toy backend of the registry test" in " ".join(_subparser(command).format_help().split())
    settings = CompileSettings(backend="toy")
    assert settings.backend == "toy"
    from steerc.cli.compile import _stages

    assert _stages(settings) == ("load", "capture", "rewrite", "export", "toy", "verify", "write")
    with pytest.raises(ValueError, match="apply to the ONNX engine only; --backend toy"):
        CompileSettings(backend="toy", weights="int8")
    from steerc.runtime import Engine

    ToyBackend.opened.clear()
    engine = Engine.load(tiny_engine, backend="toy")
    assert engine.backend == "toy" and ToyBackend.opened == [(Path(tiny_engine), "cpu")]


def test_no_backend_name_chains_outside_the_registry():
    """Backends are chosen by the registry, never by comparing a backend name to a literal."""
    root = Path(__file__).resolve().parents[2] / "steerc"
    pattern = re.compile(r"backend\s*(==|!=)\s*[\"']|[\"'](onnx|aoti|tensorrt|torch-tensorrt)[\"']\s*(==|!=)\s*\w*backend|backend\s+(not\s+)?in\s*[(\[{]")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
