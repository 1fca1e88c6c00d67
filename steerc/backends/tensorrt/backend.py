"""``--backend tensorrt`` (formerly ``torch-tensorrt``): a TensorRT plan beside the ONNX engine, CUDA only."""

from __future__ import annotations

from pathlib import Path

from steerc.backends.base import Backend

__all__ = ["TensorRTBackend"]


class TensorRTBackend(Backend):
    """Builds ``model.plan`` with torch-tensorrt (:mod:`~steerc.backends.tensorrt.plan`) and runs it
    with TensorRT's runtime (:mod:`~steerc.backends.tensorrt.runner`)."""

    name = "tensorrt"
    devices = ("cuda",)
    device_note = "builds a TensorRT plan, which runs on an NVIDIA GPU only"
    stage = "tensorrt"

    def available(self, device: str) -> str | None:
        from steerc.backends.tensorrt.plan import INSTALL_HINT, unavailable

        reason = unavailable(("torch_tensorrt", "tensorrt"))
        return f"{INSTALL_HINT} (here {reason})" if reason else None

    def build(self, program, folder: Path, settings) -> dict:
        from steerc.backends.tensorrt.plan import build_tensorrt_plan

        return build_tensorrt_plan(program.program, folder, program.geometry, program.inputs, settings, outputs=program.outputs)

    def open_session(self, folder: Path, manifest: dict, device: str, threads: int | None = None, *, weights=None, shared_arena: bool = False):
        from steerc.backends.tensorrt.runner import tensorrt_session

        return tensorrt_session(folder, manifest, device)
