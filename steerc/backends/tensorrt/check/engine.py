"""The TensorRT parser-rules check of an engine folder: every ONNX graph in it, the step graph
(``backend.model`` in ``steerc.json``, default ``model.onnx``), the graph ``trtexec.sh`` builds a
plan of, then the analysis graph (``analysis.onnx``) and the selector graph (``selector.onnx``)
where the folder has them. A ``--target tensorrt`` compile writes all of them to the rules; an
ONNX Runtime engine's derived analysis and selector graphs break them (their ``Attention`` nodes
return the softmax probabilities as a fourth output)."""

from __future__ import annotations

from pathlib import Path

from steerc.backends.tensorrt.check.checker import check_tensorrt
from steerc.backends.tensorrt.check.violations import Violation

__all__ = ["check_engine", "engine_model_path", "engine_graph_paths"]

def check_engine(folder) -> dict[str, list[Violation]]:
    """Check every ONNX graph of an engine folder (:func:`engine_graph_paths`); returns file name
    -> its violations, in that order (an empty list: the graph meets the rules)."""
    return {path.name: check_tensorrt(path) for path in engine_graph_paths(folder)}


def engine_model_path(folder) -> Path:
    """The engine's step graph (``backend.model`` in ``steerc.json``, default ``model.onnx``)."""
    from steerc.engine_format import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, check_files=False)
    return folder / manifest.get("backend", {}).get("model", "model.onnx")


def engine_graph_paths(folder) -> list[Path]:
    """The step graph (whether or not the file exists: the caller says it is missing), then the
    analysis and selector graphs the folder has."""
    from steerc.backends.onnx.export import ANALYSIS_FILE, SELECTOR_FILE

    folder = Path(folder)
    return [engine_model_path(folder)] + [folder / name for name in (ANALYSIS_FILE, SELECTOR_FILE) if (folder / name).is_file()]
