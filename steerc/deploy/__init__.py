"""Deployment targets for compiled engine folders: Triton Inference Server model repositories
(the :mod:`~steerc.deploy.triton` package: export, config.pbtxt writing, protobuf text, platforms
(onnxruntime vs tensorrt plan), implicit-KV sequence state, repository layout)."""

from steerc.deploy.triton import export_triton

__all__ = ["export_triton"]
