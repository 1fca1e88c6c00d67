"""Placing models in a Triton model repository: model names, the checks on an existing model
folder, and :func:`write_models`, which builds each model folder (``config.pbtxt`` and
``1/`` with the engine's files, hard-linked when the repository is on the same filesystem,
else copied) in a hidden temporary folder inside the repository and renames it into place, so
Triton never sees half a model."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from steerc.atomic import install_folder
from steerc.errors import EngineError, SteercError

__all__ = ["VERSION", "ModelFolder", "model_name", "check_target", "write_models"]

log = logging.getLogger(__name__)

VERSION = "1"  # Triton model version folder
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelFolder:
    """One model to write: its ``name``, its ``config`` text and its ``files`` as (path relative
    to the engine folder, file name in the version folder ``1/``)."""

    name: str
    config: str
    files: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid Triton model name {self.name!r}")


def model_name(name: str | None, engine: Path) -> str:
    """``name`` checked, or one made from the engine folder's name."""
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", engine.name).lstrip("._-") or "steerc"
    if not _NAME_RE.match(name):
        raise SteercError(f"invalid Triton model name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name


def check_target(folder: Path, force: bool) -> None:
    """Refuse to replace a non-empty model folder without ``force``, or anything but a Triton model."""
    if folder.exists() and not folder.is_dir():
        raise EngineError(f"{folder} exists and is not a folder; remove it or choose another name with --name")
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise EngineError(f"Triton model {folder} already exists and is not empty; pass --force to replace it, or choose another name with --name")
        if not (folder / "config.pbtxt").is_file():
            raise EngineError(f"{folder} is not empty and is not a Triton model (no config.pbtxt); refusing to replace it even with --force")


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link ``src`` to ``dst`` (same filesystem), else copy it; returns which."""
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
        return "copied"


def write_models(repo: Path, engine: Path, models: list[ModelFolder]) -> list[dict[str, str]]:
    """Write every model into ``repo`` (created if needed): all are built first, then each is moved
    into place; on any failure the partial folders are removed. Returns, per model, how each file
    of ``1/`` was placed (``{"1/model.onnx": "hard-linked", ...}``)."""
    repo.mkdir(parents=True, exist_ok=True)
    built: list[tuple[Path, Path]] = []
    placed_all = []
    try:
        for model in models:
            tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.partial-", dir=repo))
            built.append((tmp, repo / model.name))
            os.chmod(tmp, 0o755)
            (tmp / VERSION).mkdir()
            placed = {}
            for rel, dst_name in model.files:
                placed[f"{VERSION}/{dst_name}"] = _link_or_copy(engine / rel, tmp / VERSION / dst_name)
            (tmp / "config.pbtxt").write_text(model.config, encoding="utf-8")
            os.chmod(tmp / "config.pbtxt", 0o644)
            placed_all.append(placed)
        for tmp, target in built:
            install_folder(tmp, target)
            log.info("Triton model %s written", target)
    except BaseException:
        for tmp, _ in built:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return placed_all
