"""Backends turn a rewritten ExportedProgram into an engine artifact.

ONNX (ONNX Runtime, CPU or CUDA) is the only backend so far; TensorRT will follow and is
imported lazily so that steerc works without it.
"""

__all__ = ["onnx"]
