"""Everything TensorRT, in one place. None of it needs TensorRT to import.

* ``--backend tensorrt`` (:class:`~steerc.backends.tensorrt.backend.TensorRTBackend`): a
  serialized plan built by torch-tensorrt (:mod:`~steerc.backends.tensorrt.plan`) and run by
  TensorRT's runtime (:mod:`~steerc.backends.tensorrt.runner`);
* ``--target tensorrt``: the ONNX step graph written for TensorRT's ONNX parser: the static
  parser-rules checker (the :mod:`~steerc.backends.tensorrt.check` package, :func:`check_tensorrt`,
  :func:`check_engine`: violations, the graph driver, per-op and transformer-op rules, the engine
  folder's step graph; the rules' data in :mod:`~steerc.backends.tensorrt.supported_ops`)
  and the shape profiles and ``trtexec`` command of the plan trtexec would build
  (:mod:`~steerc.backends.tensorrt.shape_profiles`). The rewrite that meets those rules is an
  ONNX pass: :mod:`steerc.passes.onnx.make_tensorrt_ready`.

Imports are lazy: ``import steerc.backends.tensorrt`` pulls in nothing heavy, and
``tensorrt`` / ``torch_tensorrt`` are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib

__all__ = ["Violation", "check_tensorrt", "check_engine", "shape_profiles", "trtexec_command"]

_WHERE = {"Violation": "check", "check_tensorrt": "check", "check_engine": "check", "shape_profiles": "shape_profiles", "trtexec_command": "shape_profiles"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"steerc.backends.tensorrt.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
