"""TensorRT readiness of steerc's ONNX graphs: a static checker of what TensorRT's ONNX parser
refuses (:func:`check_tensorrt`, :func:`check_engine`) and the ONNX rewrite that makes an exported
step graph pass it (:func:`make_tensorrt_ready`). Neither needs TensorRT installed.

Imports are lazy: ``import steerc.tensorrt`` pulls in nothing heavy.
"""

from __future__ import annotations

import importlib

__all__ = ["Violation", "check_tensorrt", "check_engine", "make_tensorrt_ready"]

_WHERE = {"Violation": "check", "check_tensorrt": "check", "check_engine": "check", "make_tensorrt_ready": "ready"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"steerc.tensorrt.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
