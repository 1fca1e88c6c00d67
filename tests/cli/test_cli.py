"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors."""

import json
from pathlib import Path

import pytest
from cli_process import run_cli


def steerc(*args, env=None, cwd=None):
    """``python -m steerc.cli ARGS`` in its own process (forked from a zygote: tests/cli_process.py)."""
    return run_cli(*args, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def compiled(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "engine"
    result = steerc("compile", str(tiny_folder), "-o", str(out), "--max-seq-len", "128", "--max-batch", "4")
    assert result.returncode == 0, result.stderr
    return out, result


def test_compile_shows_stages_and_summary(compiled):
    out, result = compiled
    for i, stage in enumerate(("load", "capture", "rewrite", "export", "verify", "write"), 1):
        assert f"[{i}/6] {stage}" in result.stdout
    assert "engine ready" in result.stdout and "2 attention sites steered (sdpa: 2)" in result.stdout
    assert "peak memory" in result.stdout
    assert json.loads((out / "steerc.json").read_text())["max_seq_len"] == 128


def test_inspect_prints_manifest_and_sites(compiled):
    out, _ = compiled
    result = steerc("inspect", str(out))
    assert result.returncode == 0, result.stderr
    assert "LlamaForCausalLM" in result.stdout and "pass insert_steering_bias: 2 site(s)" in result.stdout
    assert "layer   1  sdpa" in result.stdout and "files verified" not in result.stderr
    raw = steerc("inspect", str(out), "--json")
    assert json.loads(raw.stdout)["format"] == "steerc-engine"


def _one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steerc: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_existing_output_is_refused(compiled, tiny_folder):
    out, _ = compiled
    _one_line_error(steerc("compile", str(tiny_folder), "-o", str(out)), "already exists; pass --force")


def test_unknown_model(tmp_path):
    _one_line_error(steerc("compile", "nobody/no-such-model", "-o", str(tmp_path / "e"), env={"HF_HUB_CACHE": str(tmp_path)}), "not in the local Hugging Face cache")
    assert not (tmp_path / "e").exists()


def test_unsupported_architecture(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path / "vit")
    _one_line_error(steerc("compile", str(tmp_path / "vit"), "-o", str(tmp_path / "e")), "architecture 'vit'")


def test_invalid_option(tmp_path, tiny_folder):
    _one_line_error(steerc("compile", str(tiny_folder), "-o", str(tmp_path / "e"), "--opset", "12"), "opset must be one of")


def test_missing_optional_dependency(tmp_path, tiny_folder):
    """onnxscript really absent: a shadowing package that fails to import, first on the path."""
    shadow = tmp_path / "shadow" / "onnxscript"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    result = steerc("compile", str(tiny_folder), "-o", str(tmp_path / "e"), env={"PYTHONPATH": str(shadow.parent)})
    _one_line_error(result, "needs the 'onnxscript' package", "pip install onnxscript")
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.partial-*"))


def test_debug_shows_traceback(tmp_path):
    result = steerc("--debug", "inspect", str(tmp_path / "nope"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_inspect_corrupt_engine(compiled, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(compiled[0], copy)
    Path(copy / "config.json").write_text("{}")
    _one_line_error(steerc("inspect", str(copy)), "corrupt: config.json")


@pytest.mark.parametrize("settings, layout", [(dict(kv="in-place"), "decode rows left-aligned"),
                                              (dict(kv="in-place", attention_op="group-query", logits="all"), "decode rows left-aligned")])
def test_inspect_shows_the_kv_writer_and_the_batch_layout(tiny_folder, compiled_engine, settings, layout):
    out = compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, **settings)
    result = steerc("inspect", str(out))
    assert result.returncode == 0, result.stderr
    writer = "GroupQueryAttention" if settings.get("attention_op") else "TensorScatter"
    assert f"written by {writer}" in result.stdout and layout in result.stdout
    logits = "every position" if settings.get("logits") == "all" else "the last position only"
    assert f"logits    {logits}" in result.stdout
