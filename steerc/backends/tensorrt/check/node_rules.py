"""The static restrictions TensorRT's ONNX parser puts on ops of its supported list: inputs it
reads at import time, attribute values and extra outputs it refuses, ranks and dtypes it cannot
handle. One function per op, ``rule(report, node, name, g)``; :data:`RULES` maps op types to them
(the fused transformer ops are in :mod:`~steerc.backends.tensorrt.check.transformer_rules`)."""

from __future__ import annotations

from steerc.backends.tensorrt.check.graph import BOOL, FLOAT16, FLOAT32, UINT8, GraphInfo, attr, has_attr, input_name
from steerc.backends.tensorrt.check.violations import Report
from steerc.backends.tensorrt.supported_ops import dtype_name

__all__ = ["RULES", "REDUCE_OPS", "need_constant"]

REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
_RESIZE_COORD = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


def need_constant(report: Report, node, name: str, g: GraphInfo, i: int, what: str) -> None:
    """Report ``node``'s input ``i`` unless it is an initializer or Constant."""
    tensor = input_name(node, i)
    if tensor and tensor not in g.constants:
        report(name, node.op_type, "constant-input", f"{what} ({tensor}) is computed at run time; TensorRT's parser needs it as an initializer or Constant (fold it into a constant)")


def squeeze(report, node, name, g):
    if input_name(node, 1):
        need_constant(report, node, name, g, 1, "Squeeze axes")
    elif not has_attr(node, "axes"):
        shape = g.shapes.get(node.input[0])
        if shape is None or any(d is None for d in shape):
            report(name, "Squeeze", "constant-input", f"Squeeze without axes on {node.input[0]}, whose shape is not static; TensorRT cannot tell which dimensions to squeeze (give the axes explicitly)")


def unsqueeze(report, node, name, g):
    if input_name(node, 1):
        need_constant(report, node, name, g, 1, "Unsqueeze axes")


def _constant_input(i: int, what: str):
    def rule(report, node, name, g):
        need_constant(report, node, name, g, i, what)

    return rule


def reduce(report, node, name, g):
    need_constant(report, node, name, g, 1, f"{node.op_type} axes")
    dtype = g.dtype(node.input[0])
    if dtype in (BOOL, UINT8):
        report(name, node.op_type, "dtype", f"{node.op_type} of a {dtype_name(dtype)} tensor; TensorRT does not reduce bool or uint8")


def topk(report, node, name, g):
    need_constant(report, node, name, g, 1, "TopK K")
    if attr(node, "sorted", 1) != 1:
        report(name, "TopK", "attribute", "TopK sorted=0; TensorRT's TopK always sorts (sorted must be 1)")


def range_(report, node, name, g):
    dtypes = {g.dtype(input_name(node, i)) for i in range(3)} - {None}
    if len(dtypes) > 1:
        report(name, "Range", "dtype", f"Range start/limit/delta have different types ({', '.join(sorted(dtype_name(t) for t in dtypes))}); TensorRT needs one type")
    if dtypes & {FLOAT32, FLOAT16, 16, 11}:
        for i, what in enumerate(("start", "limit", "delta")):
            need_constant(report, node, name, g, i, f"floating-point Range {what}")


def dropout(report, node, name, g):
    if input_name(node, 2):
        need_constant(report, node, name, g, 2, "Dropout training_mode")


def constant(report, node, name, g):
    for key in ("sparse_value", "value_string", "value_strings"):
        if has_attr(node, key):
            report(name, "Constant", "attribute", f"Constant with a {key} attribute; TensorRT supports numeric values only")


def layer_norm(report, node, name, g):
    if any(node.output[1:]):
        report(name, "LayerNormalization", "attribute", "LayerNormalization with a Mean or InvStdDev output; TensorRT supports only the first output Y")


def max_pool(report, node, name, g):
    if any(node.output[1:]):
        report(name, "MaxPool", "attribute", "MaxPool with an Indices output; TensorRT does not produce it")
    average_pool(report, node, name, g)


def average_pool(report, node, name, g):
    if any(d != 1 for d in attr(node, "dilations", [])):
        report(name, node.op_type, "attribute", f"{node.op_type} dilations {list(attr(node, 'dilations'))}; TensorRT needs them empty or all ones")
    rank = g.rank(node.input[0])
    if rank is not None and rank not in (4, 5):
        report(name, node.op_type, "attribute", f"{node.op_type} on a rank-{rank} tensor; TensorRT pools in 2D or 3D only (rank 4 or 5)")


def lp_pool(report, node, name, g):
    if any(d != 1 for d in attr(node, "dilations", [])):
        report(name, "LpPool", "attribute", "LpPool dilations other than ones; TensorRT needs them empty or all ones")


def scatter_nd(report, node, name, g):
    reduction = attr(node, "reduction", b"none")
    if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
        report(name, "ScatterND", "attribute", f"ScatterND reduction={reduction!r}; TensorRT supports plain scatter only")


def lstm(report, node, name, g):
    for key in ("input_forget", "layout"):
        if attr(node, key, 0) != 0:
            report(name, "LSTM", "attribute", f"LSTM {key}={attr(node, key)}; TensorRT needs {key}=0")


def grid_sample(report, node, name, g):
    rank = g.rank(node.input[0])
    if rank is not None and rank != 4:
        report(name, "GridSample", "attribute", f"GridSample on a rank-{rank} input; TensorRT needs a 4-D input")


def eye_like(report, node, name, g):
    shape = g.shapes.get(node.input[0])
    if shape is not None and any(d is None for d in shape):
        report(name, "EyeLike", "attribute", "EyeLike of a dynamically shaped tensor; TensorRT needs static dimensions")


def resize(report, node, name, g):
    def s(key, default):
        value = attr(node, key, default)
        return value.decode() if isinstance(value, bytes) else value

    if attr(node, "antialias", 0):
        report(name, "Resize", "attribute", "Resize antialias=1; TensorRT does not antialias")
    if s("mode", "nearest") not in ("nearest", "linear"):
        report(name, "Resize", "attribute", f"Resize mode {s('mode', '')}; TensorRT supports nearest and linear")
    if s("coordinate_transformation_mode", "half_pixel") not in _RESIZE_COORD:
        report(name, "Resize", "attribute", f"Resize coordinate_transformation_mode {s('coordinate_transformation_mode', '')} is not supported by TensorRT")
    if s("nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
        report(name, "Resize", "attribute", f"Resize nearest_mode {s('nearest_mode', '')} is not supported by TensorRT")
    if s("keep_aspect_ratio_policy", "stretch") != "stretch":
        report(name, "Resize", "attribute", "Resize keep_aspect_ratio_policy other than stretch is not supported by TensorRT")


RULES = {
    "Squeeze": squeeze, "Unsqueeze": unsqueeze,
    "Slice": _constant_input(3, "Slice axes"), "Pad": _constant_input(3, "Pad axes"),
    "CumSum": _constant_input(1, "CumSum axis"), "OneHot": _constant_input(1, "OneHot depth"),
    **dict.fromkeys(REDUCE_OPS, reduce),
    "TopK": topk, "Range": range_, "Dropout": dropout, "Constant": constant, "LayerNormalization": layer_norm,
    "MaxPool": max_pool, "AveragePool": average_pool, "LpPool": lp_pool, "ScatterND": scatter_nd, "LSTM": lstm,
    "GridSample": grid_sample, "EyeLike": eye_like, "Resize": resize,
}
