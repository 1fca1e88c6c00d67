"""The TensorRT parser-rules check of an engine folder: its step graph (``backend.model`` in
``steerc.json``, default ``model.onnx``), the graph TensorRT would run. The analysis graph
(``analysis.onnx``) is not checked: only ONNX Runtime runs it (LLMSteer's selection)."""

from __future__ import annotations

from pathlib import Path

from steerc.backends.tensorrt.check.checker import check_tensorrt
from steerc.backends.tensorrt.check.violations import Violation

__all__ = ["check_engine", "engine_model_path"]


def check_engine(folder) -> list[Violation]:
    """Check an engine folder's step graph (``backend.model`` in ``steerc.json``, default
    ``model.onnx``): the graph TensorRT would run. The analysis graph is not checked: only ONNX
    Runtime runs it (LLMSteer's selection), never TensorRT."""
    return check_tensorrt(engine_model_path(folder))


def engine_model_path(folder) -> Path:
    from steerc.engine_format import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, check_files=False)
    return folder / manifest.get("backend", {}).get("model", "model.onnx")
