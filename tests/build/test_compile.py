"""compile_engine: folder contents, manifest contract, atomic writes, corrupt folders."""

import json

import pytest
from conftest import TEST_SETTINGS

from steerc.build import MANIFEST_FILE, compile_engine, read_manifest
from steerc.engine_format import FORMAT_VERSION
from steerc.errors import EngineError
from steerc.settings import CompileSettings

GENAI_MODEL_KEYS = {"bos_token_id", "context_length", "decoder", "eos_token_id", "pad_token_id", "type", "vocab_size"}
GENAI_DECODER_KEYS = {"session_options", "filename", "head_size", "hidden_size", "inputs", "outputs", "num_attention_heads", "num_hidden_layers", "num_key_value_heads"}


@pytest.fixture(scope="module")
def engine(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "tiny"
    manifest = compile_engine(str(tiny_folder), out, TEST_SETTINGS)
    return out, manifest


def test_engine_folder_contents(engine):
    out, manifest = engine
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.onnx.data", "steerc.json", "genai_config.json", "config.json"} <= names
    assert set(manifest["files"]) == names - {MANIFEST_FILE}
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_manifest_contract(engine):
    out, manifest = engine
    assert read_manifest(out) == manifest
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["geometry"] == {"num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "hidden_size": 64, "vocab_size": 128}
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["dtype"] == "fp32"
    assert manifest["source"]["kind"] == "folder" and len(manifest["source"]["sha256"]) == 64
    assert manifest["inputs"][-1] == {"name": "steer_bias", "dtype": "float32", "dims": ["batch_size", 2, 4, "total_sequence_length"]}
    assert [o["name"] for o in manifest["outputs"]][:3] == ["logits", "present.0.key", "present.0.value"]
    steer, gqa = manifest["passes"]  # the tiny Llama is GQA (4 heads, 2 KV heads)
    assert steer["name"] == "insert_steering_bias" and steer["sites_per_layer"] == {"0": 1, "1": 1}
    assert gqa["name"] == "use_native_gqa" and gqa["num_sites"] == 2
    assert manifest["backend"]["op_counts"]["Attention"] == 2
    assert manifest["verify"]["prefill_zero_bias_rel_err"] < 1e-4 and manifest["verify"]["decode_steered_rel_err"] < 1e-4
    assert manifest["max_seq_len"] == 256 and manifest["tokenizer"] is False


def test_genai_config_has_only_schema_keys(engine):
    out, _ = engine
    cfg = json.loads((out / "genai_config.json").read_text())
    assert set(cfg) == {"model", "search"}
    assert set(cfg["model"]) == GENAI_MODEL_KEYS
    assert set(cfg["model"]["decoder"]) == GENAI_DECODER_KEYS
    assert cfg["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert "steer" not in json.dumps(cfg)


def test_existing_folder_needs_force(engine, tiny_folder):
    out, _ = engine
    with pytest.raises(EngineError, match="already exists; pass --force"):
        compile_engine(str(tiny_folder), out, TEST_SETTINGS)


def test_force_refuses_a_folder_that_is_not_an_engine(tmp_path, tiny_folder):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(EngineError, match="not a steerc engine"):
        compile_engine(str(tiny_folder), tmp_path, TEST_SETTINGS, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_failure_leaves_nothing_behind(tmp_path, tiny_folder, monkeypatch):
    import steerc.backends.onnx.graphs as graphs

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(graphs, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        compile_engine(str(tiny_folder), tmp_path / "eng", TEST_SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_only_after_success(tmp_path, tiny_folder, monkeypatch, engine):
    import shutil

    import steerc.backends.onnx.graphs as graphs

    out = tmp_path / "eng"
    shutil.copytree(engine[0], out)
    monkeypatch.setattr(graphs, "export_onnx", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("interrupted")))
    with pytest.raises(RuntimeError):
        compile_engine(str(tiny_folder), out, TEST_SETTINGS, force=True)
    assert read_manifest(out)["architecture"] == "LlamaForCausalLM"  # the old engine is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]


@pytest.fixture
def engine_copy(engine, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(engine[0], out)
    return out


def test_corrupt_weights_are_refused(engine_copy):
    data = engine_copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(EngineError, match=r"corrupt: model.onnx.data does not match its sha256"):
        read_manifest(engine_copy)


def test_partial_folder_is_refused(engine_copy):
    (engine_copy / "model.onnx.data").unlink()
    with pytest.raises(EngineError, match="incomplete: model.onnx.data is missing"):
        read_manifest(engine_copy)


def _resealed(text, **changes):
    """A manifest edited on purpose and given a valid checksum (e.g. written by another version)."""
    from steerc.engine_format import _checksum

    data = {**json.loads(text), **changes}
    data["checksum"] = _checksum(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: _resealed(text, format_version=99), "format version 99"),
        (lambda text: _resealed(text, format="other"), "not a steerc engine manifest"),
        (lambda text: text.replace('"dtype": "fp32"', '"dtype": "fp16"'), "checksum does not match"),
    ],
)
def test_bad_manifest_is_refused(engine_copy, edit, message):
    path = engine_copy / MANIFEST_FILE
    path.write_text(edit(path.read_text()))
    with pytest.raises(EngineError, match=message):
        read_manifest(engine_copy)


def test_missing_manifest(tmp_path):
    with pytest.raises(EngineError, match="not a steerc engine"):
        read_manifest(tmp_path)
    with pytest.raises(EngineError, match="does not exist"):
        read_manifest(tmp_path / "nope")


def test_fp16_engine_is_verified(tiny_folder, tmp_path):
    manifest = compile_engine(str(tiny_folder), tmp_path / "e", CompileSettings(dtype="fp16", max_seq_len=64))
    assert manifest["inputs"][3]["dtype"] == "float16" and manifest["dtype"] == "fp16"
    assert manifest["verify"]["prefill_zero_bias_rel_err"] < manifest["verify"]["tolerance"] == 3e-2


def test_bf16_engine_skips_cpu_verification_and_cpu_runtime_refuses_it(tiny_folder, tmp_path):
    from steerc.runtime import Engine

    manifest = compile_engine(str(tiny_folder), tmp_path / "e", CompileSettings(dtype="bf16", max_seq_len=64))
    assert "no bfloat16" in manifest["verify"]["skipped"]
    with pytest.raises(EngineError, match="bf16, which ONNX Runtime's CPU provider cannot run"):
        Engine.load(tmp_path / "e")
