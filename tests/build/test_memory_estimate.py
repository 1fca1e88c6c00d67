"""The compile memory preflight: parameter counts of real configs from shapes alone (no weights
loaded), the refusal before loading when memory is short, and its overrides."""

import importlib.util
from pathlib import Path

import pytest

from steerc.build import compile_engine
from steerc.build import memory_estimate as me
from steerc.errors import EngineError
from steerc.settings import CompileSettings

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_random_models", ROOT / "tools" / "make_random_models.py")
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)

GIB = 1 << 30


@pytest.mark.parametrize("name", sorted(models.REAL_CONFIGS))
def test_parameter_count_of_real_configs(name):
    count = me.parameter_count(models.real_config(name))
    assert count == pytest.approx(models.KNOWN_PARAMETERS[name], rel=0.02)


def test_known_counts_are_the_published_sizes():
    # Qwen2.5-0.5B ~494M, Llama-3.2-1B ~1.24B, SmolLM2-1.7B ~1.71B: the table the test above checks against.
    assert [round(models.KNOWN_PARAMETERS[n] / 1e6) for n in ("qwen2.5-0.5b", "llama-3.2-1b", "smollm2-1.7b")] == [494, 1236, 1711]


def test_estimate_scales_with_dtype_and_multiplier():
    config = models.real_config("llama-3.2-1b")
    fp32 = me.estimate_compile_memory(config, CompileSettings(), available_bytes=64 * GIB)
    fp16 = me.estimate_compile_memory(config, CompileSettings(dtype="fp16"), available_bytes=64 * GIB)
    assert fp32.weight_bytes == 4 * fp32.parameters and fp16.weight_bytes == 2 * fp16.parameters
    assert fp32.peak_bytes == me.BASE_BYTES + int(me.PEAK_MULTIPLIER["full"] * fp32.weight_bytes)
    assert fp32.fits and fp16.peak_bytes < fp32.peak_bytes


def test_refusal_names_the_estimate_and_the_ways_out():
    config = models.real_config("smollm2-1.7b")
    with pytest.raises(EngineError) as err:
        me.check_compile_memory(config, CompileSettings(weights="int4"), available_bytes=8 * GIB)
    message = str(err.value)
    assert "1.71B parameters" in message and "6.4 GiB of fp32 weights" in message and "only 8.0 GiB is available" in message
    assert "--weights int4 does not lower it" in message and me.SKIP_FLAG in message and me.SKIP_ENV in message
    assert "more memory" in message


def test_enough_memory_passes():
    est = me.check_compile_memory(models.real_config("qwen2.5-0.5b"), CompileSettings(), available_bytes=64 * GIB)
    assert est.fits and est.available_bytes == 64 * GIB


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded")


class _Loaded(Exception):
    pass


def _loaded(*args, **kwargs):
    raise _Loaded


def test_compile_refuses_before_loading(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.delenv(me.SKIP_ENV, raising=False)
    monkeypatch.setattr(me, "_available_bytes", lambda: 256 << 20)  # 256 MiB free
    monkeypatch.setattr("steerc.build.compile.load_model", _no_load)
    with pytest.raises(EngineError, match="only 0.2 GiB is available"):
        compile_engine(str(tiny_folder), tmp_path / "engine")
    assert not (tmp_path / "engine").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("how", ["argument", "env"])
def test_override_skips_the_check(tiny_folder, tmp_path, monkeypatch, how):
    monkeypatch.delenv(me.SKIP_ENV, raising=False)
    monkeypatch.setattr(me, "_available_bytes", lambda: 256 << 20)
    monkeypatch.setattr("steerc.build.compile.load_model", _loaded)
    if how == "env":
        monkeypatch.setenv(me.SKIP_ENV, "1")
    with pytest.raises(_Loaded):  # past the check: it went on to load the model
        compile_engine(str(tiny_folder), tmp_path / "engine", memory_check=how != "argument")


def test_cli_flag_reaches_compile_engine(monkeypatch, tmp_path):
    from steerc.cli import build_parser

    args = build_parser().parse_args(["compile", "x", "-o", str(tmp_path / "e"), me.SKIP_FLAG])
    assert args.skip_memory_check is True
    assert build_parser().parse_args(["compile", "x", "-o", str(tmp_path / "e")]).skip_memory_check is False
