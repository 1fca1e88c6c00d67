"""The ONNX pass contract: ``pass(graph: OnnxGraph, settings) -> OnnxPassReport``.

An ONNX pass rewrites an exported graph file in place (the proto only, or the proto and its
external data file) after ``torch.onnx.export``; the torch-level passes of :mod:`steerc.passes`
run before it, on the captured FX graph. Each pass function carries ``wanted(settings) -> bool``:
whether a compile with those :class:`~steerc.settings.CompileSettings` runs it. A pass that runs
and cannot do its rewrite raises (an ``EngineError``, a ``PassError`` or ``RuntimeError`` naming
the graph); its report's ``entry`` is what the engine manifest records about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OnnxGraph", "OnnxPassReport", "onnx_pass", "save_proto", "save_with_weights"]


def save_with_weights(model, path: Path, tag: str) -> int:
    """Write ``model`` over ``path`` and its external data file (``path.name + '.data'``), both
    written in a hidden temporary folder beside them (named after ``tag``) and moved into place;
    check the result. Returns the new data file's size in bytes."""
    import os
    import tempfile

    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.{tag}-") as tmp:
        out = Path(tmp) / path.name
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        os.replace(Path(tmp) / data.name, data)
        os.replace(out, path)
    onnx.checker.check_model(str(path))
    return data.stat().st_size


def save_proto(model, path: Path) -> None:
    """Write ``model``'s proto over ``path`` atomically (a hidden temporary file beside it, moved
    into place); its initializers' external data entries stay relative to the folder."""
    import os
    import tempfile

    import onnx

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class OnnxGraph:
    """The graph an ONNX pass rewrites: ``path`` (its weights in an external data file beside it)
    and what the passes that need more than the file read: the model's ``num_layers``, the
    analysis graph's ``analysis_outputs`` (TensorSpecs) and where it is written (``analysis_path``),
    the selector graph's leading layers (``selector_layers``, 0: none), the layers of those whose
    attention it outputs (``selector_score_layers``, empty: all) and its path (``selector_path``), and the token ids a calibrating pass prefills (``calibration_ids``)."""

    path: Path
    num_layers: int = 0
    analysis_outputs: tuple = ()
    analysis_path: Path | None = None
    selector_layers: int = 0
    selector_path: Path | None = None
    selector_score_layers: tuple[int, ...] = ()
    calibration_ids: tuple[int, ...] = ()  # token ids a calibrating pass (quantize_kv_cache) prefills

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 0:
            raise ValueError(f"num_layers must be an integer >= 0, got {self.num_layers!r}")
        object.__setattr__(self, "analysis_outputs", tuple(self.analysis_outputs))
        if isinstance(self.selector_layers, bool) or not isinstance(self.selector_layers, int) or not 0 <= self.selector_layers <= max(self.num_layers, 0):
            raise ValueError(f"selector_layers must be an integer in [0, num_layers], got {self.selector_layers!r}")
        object.__setattr__(self, "selector_score_layers", tuple(self.selector_score_layers))
        object.__setattr__(self, "calibration_ids", tuple(int(t) for t in self.calibration_ids))
        if any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < self.selector_layers for x in self.selector_score_layers):
            raise ValueError(f"selector_score_layers must be layers below selector_layers ({self.selector_layers}), got {list(self.selector_score_layers)}")


@dataclass(frozen=True)
class OnnxPassReport:
    """What an ONNX pass did: its ``name`` and the manifest ``entry`` that records it."""

    name: str
    entry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an ONNX pass report needs the pass's name")


def onnx_pass(wanted: Callable[[Any], bool]):
    """Mark a function ``(graph, settings) -> OnnxPassReport`` as an ONNX pass run when ``wanted(settings)``."""

    def mark(fn):
        fn.wanted = wanted
        return fn

    return mark
