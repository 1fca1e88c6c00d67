"""Model resolution: default package, .gguf, folders, local HF cache, and the errors for each."""

import json

import pytest

from steerc.errors import ModelNotFoundError, UnsupportedArchitectureError
from steerc.models import DEFAULT_MODEL, load_model, resolve_model


def test_default_model_resolves_to_the_packaged_gguf():
    source = resolve_model(None)
    assert source.spec == DEFAULT_MODEL and source.kind == "gguf"
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and source.path.is_file()
    assert resolve_model(DEFAULT_MODEL) == source


def test_missing_paths_name_the_problem(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file .*missing.gguf does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./no/such/model")
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_uncached_hub_id_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("someorg/some-model")
    message = str(err.value)
    assert "'someorg/some-model' is not in the local Hugging Face cache" in message and "hf download someorg/some-model" in message
    assert "\n" not in message


def test_hub_id_resolves_from_local_cache(monkeypatch, tmp_path, tiny_folder):
    """A real HF cache layout (refs/main -> snapshots/<rev>) is found without network."""
    import shutil

    repo = tmp_path / "models--someorg--tiny"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    source = resolve_model("someorg/tiny")
    assert source.kind == "hub" and source.path == snapshot
    loaded = load_model(source)
    assert loaded.model.config.num_hidden_layers == 2 and loaded.tokenizer is None


def test_non_causal_architecture_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="architecture 'vit' .* has no causal-LM head"):
        load_model(str(tmp_path))


def test_folder_model_loads_in_requested_dtype(tiny_folder):
    import torch

    loaded = load_model(str(tiny_folder), dtype="fp16", attn_implementation="eager")
    assert next(loaded.model.parameters()).dtype == torch.float16
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.source.kind == "folder" and len(loaded.sha256) == 64
    assert json.loads((tiny_folder / "config.json").read_text())["model_type"] == "llama"
