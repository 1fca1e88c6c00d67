"""Static check of an ONNX graph against TensorRT's ONNX parser rules (``steerc check-tensorrt``,
``--target tensorrt``), without TensorRT: the public names, re-exported from violations (what is
reported, and the rule ids), checker (the driver), node_rules and transformer_rules (the per-op
rules), graph (dtypes, ranks and constants of a graph) and engine (every ONNX graph of an engine folder)."""

from steerc.backends.tensorrt.check.checker import check_model_summary, check_tensorrt
from steerc.backends.tensorrt.check.engine import check_engine, engine_graph_paths, engine_model_path
from steerc.backends.tensorrt.check.violations import CheckResult, Violation

__all__ = ["Violation", "check_tensorrt", "check_engine", "CheckResult", "check_model_summary", "engine_model_path", "engine_graph_paths"]
