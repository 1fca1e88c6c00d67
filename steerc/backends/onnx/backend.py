"""``--backend onnx``: the engine folder's own form, ONNX graphs run by ONNX Runtime (CPU or CUDA)."""

from __future__ import annotations

from pathlib import Path

from steerc.backends.base import Backend
from steerc.errors import MissingDependencyError, require

__all__ = ["OnnxBackend"]


class OnnxBackend(Backend):
    """Builds ``model.onnx`` and ``analysis.onnx`` (:func:`~steerc.backends.onnx.graphs.export_graphs`)
    in every compile, and runs the step graph on ONNX Runtime."""

    name = "onnx"
    onnx_step_graph = True

    def available(self, device: str) -> str | None:
        try:
            for module in ("onnx", "onnxscript"):
                require(module, "the ONNX backend")
        except MissingDependencyError as exc:
            return str(exc)
        return None

    def build(self, program, folder: Path, settings) -> dict:
        """The manifest sections of the ONNX engine (see :func:`~steerc.backends.onnx.graphs.export_graphs`)."""
        from steerc.backends.onnx.graphs import export_graphs

        return export_graphs(program, folder, settings)

    def open_session(self, folder: Path, manifest: dict, device: str, threads: int | None = None, *, weights=None, shared_arena: bool = False):
        from steerc.backends.onnx.session import create_session

        return create_session(Path(folder) / manifest["backend"]["model"], device=device, threads=threads, weights=weights, shared_arena=shared_arena)
