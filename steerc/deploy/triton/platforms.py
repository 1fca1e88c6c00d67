"""Triton's two platforms for a steerc engine: ``onnxruntime_onnx`` (the engine's ``model.onnx``,
always there) and ``tensorrt_plan`` (``model.plan``, when the manifest records one under
``backends.tensorrt.plan``; its model is named ``NAME_trt``). Parsing ``--platform``, finding the
plan, and the TensorRT model's ``instance_group`` (its optimization profiles)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from steerc.deploy.triton.pbtxt import list_text, text
from steerc.errors import EngineError, SteercError

__all__ = ["PLATFORMS", "TRT_SUFFIX", "NO_PLAN_HINT", "parse_platforms", "inside", "tensorrt_plan", "instance_group"]

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
_PLATFORM_ALIASES = {
    "onnxruntime": "onnxruntime", "onnx": "onnxruntime", "ort": "onnxruntime", "onnxruntime_onnx": "onnxruntime",
    "tensorrt": "tensorrt", "trt": "tensorrt", "tensorrt_plan": "tensorrt",
}
TRT_SUFFIX = "_trt"

NO_PLAN_HINT = ("build one with `steerc compile MODEL -o ENGINE --backend tensorrt --device cuda` on a machine with an NVIDIA GPU and TensorRT, "
                "or export only --platform onnxruntime")


def parse_platforms(platforms: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (every platform the engine has) or a list of ``onnxruntime`` / ``tensorrt``;
    accepts a comma-separated string and the Triton platform names."""
    if platforms is None:
        return None
    items = platforms.split(",") if isinstance(platforms, str) else list(platforms)
    wanted: list[str] = []
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        if key not in _PLATFORM_ALIASES:
            raise SteercError(f"unknown platform {item!r}: choose onnxruntime and/or tensorrt (comma-separated)")
        if _PLATFORM_ALIASES[key] not in wanted:
            wanted.append(_PLATFORM_ALIASES[key])
    if not wanted:
        raise SteercError("no platform given: choose onnxruntime and/or tensorrt (comma-separated)")
    return wanted


def inside(folder: Path, rel: str) -> Path | None:
    """``folder / rel`` resolved, or ``None`` when it leaves ``folder``."""
    path = (folder / rel).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def tensorrt_plan(engine: Path, manifest: dict) -> Path | None:
    """The engine's TensorRT plan file (``backends.tensorrt.plan``), or ``None`` when it has none.
    A plan the manifest names but the folder lacks is a broken engine: :class:`EngineError`."""
    rel = ((manifest.get("backends") or {}).get("tensorrt") or {}).get("plan")
    if not rel:
        return None
    path = inside(Path(engine), str(rel))
    if path is None or not path.is_file():
        raise EngineError(f"engine {engine} names the TensorRT plan {rel!r} in its manifest but the file is not in the folder; "
                          "rebuild the engine with --force")
    return path


def instance_group(profiles: list[dict]) -> list[str]:
    """The ``config.pbtxt`` lines that let a ``tensorrt_plan`` model use every optimization profile."""
    names = ", ".join(f"{i} = {p.get('name', '?')}" for i, p in enumerate(profiles))
    return [
        f"# TensorRT optimization profiles ({names}): the backend uses only profile 0 unless told;",
        "# listing all lets each request run on the profile that fits its shapes.",
        "instance_group [",
        "  {",
        "    kind: KIND_GPU",
        f"    profile: {list_text(text(str(i)) for i in range(len(profiles)))}",
        "  }",
        "]",
    ]
