"""Triton Inference Server model repositories from engine folders (``steerc export-triton``): the
public names, re-exported from export (the driver), config (``config.pbtxt``), pbtxt (protobuf
text, dtypes and dims), platforms (onnxruntime vs tensorrt plan), sequence_state (implicit KV)
and repository (placing model folders)."""

from steerc.deploy.triton.config import model_config, validate_config
from steerc.deploy.triton.export import export_triton
from steerc.deploy.triton.pbtxt import triton_dims, triton_dtype
from steerc.deploy.triton.platforms import PLATFORMS, tensorrt_plan
from steerc.deploy.triton.sequence_state import KV_MODES

__all__ = ["export_triton", "model_config", "validate_config", "tensorrt_plan", "triton_dtype", "triton_dims", "PLATFORMS", "KV_MODES"]
