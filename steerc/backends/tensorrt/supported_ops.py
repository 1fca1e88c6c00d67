"""The ONNX operators TensorRT's ONNX parser imports, and the data types it accepts.

Source: onnx-tensorrt ``docs/operators.md`` at the "ONNX-TensorRT 10.1 GA release" commit
(96e781103cfc, June 2024; the table is titled TensorRT 10.0): every operator marked "Y", with
the data types of its main input. Restrictions that can be checked on the graph alone are
encoded in :mod:`steerc.backends.tensorrt.check` (``node_rules`` and ``transformer_rules``;
their wording there is ours), checked against that commit's ``onnxOpImporters.cpp``. Later TensorRT 10.x releases added ``Attention`` (10.14),
``RotaryEmbedding`` and ``RMSNormalization``; they are listed in ``ADDED_LATER``.

The parser reads the default ONNX domain at opsets ``OPSET_RANGE`` (9-24 for current 10.x
releases); operators of other domains (``com.microsoft`` ...) need a TensorRT plugin.
"""

from __future__ import annotations

__all__ = ["OPSET_RANGE", "SUPPORTED_OPS", "ADDED_LATER", "TENSOR_DTYPES", "op_dtypes", "dtype_name"]

OPSET_RANGE = (9, 24)

# ONNX TensorProto data types, by number (onnx.TensorProto.DataType).
_NAMES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
    17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1",
}


def dtype_name(elem_type: int) -> str:
    return _NAMES.get(elem_type, f"dtype#{elem_type}")


# Data types a TensorRT network can hold (float64 is narrowed to float32 by the parser;
# int8/int4/fp8 only as quantized types; uint8 only as a network input or output).
TENSOR_DTYPES = frozenset({1, 2, 3, 6, 7, 9, 10, 11, 16, 17, 22})

_F = frozenset({1, 10, 16})  # float32, float16, bfloat16
_I = frozenset({6, 7})  # int32, int64
_B = frozenset({9})  # bool
_FI = _F | _I
_FIB = _FI | _B
_FH = frozenset({1, 10})  # float32, float16 (no bfloat16)
_ANY = None  # no dtype restriction on the checked input (Shape, Size, ...)

# op -> data types accepted on its main input (input 0, unless _MAIN_INPUT says otherwise)
SUPPORTED_OPS: dict[str, frozenset[int] | None] = {
    **dict.fromkeys(["Abs", "Add", "ArgMax", "ArgMin", "Div", "Equal", "Greater", "GreaterOrEqual", "IsNaN", "Less", "LessOrEqual",
                     "Max", "Min", "Mod", "Mul", "Neg", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                     "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Scatter", "ScatterElements",
                     "ScatterND", "Shrink", "Sign", "Sub", "Sum", "TopK", "DepthToSpace", "SpaceToDepth", "Pad", "Range"], _FI),
    **dict.fromkeys(["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil", "Celu", "Clip",
                     "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu", "Erf", "Exp", "Floor", "Gemm",
                     "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish",
                     "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
                     "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool", "MeanVarianceNormalization", "ParametricSoftplus",
                     "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                     "Reciprocal", "Resize", "RNN", "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax",
                     "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample"], _F),
    **dict.fromkeys(["Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND",
                     "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Slice", "Split", "Squeeze", "Tile",
                     "Transpose", "Trilu", "Unsqueeze", "Where"], _FIB),
    **dict.fromkeys(["Cast", "CastLike"], _FIB | {2}),
    **dict.fromkeys(["And", "Not", "Or", "Xor"], _B),
    **dict.fromkeys(["DeformConv", "GridSample", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign"], _FH),
    "DequantizeLinear": frozenset({3, 17, 22}),  # int8, fp8, int4
    "Gelu": _FI | {3},
    "Mean": _FI | {17},
    "Shape": _ANY,
    "Size": _ANY,
}

# Added to the parser after that table (TensorRT 10.x): Attention (10.14), RotaryEmbedding, RMSNormalization.
ADDED_LATER: dict[str, frozenset[int] | None] = {"Attention": _F, "RotaryEmbedding": _F, "RMSNormalization": _F}
SUPPORTED_OPS.update(ADDED_LATER)

# Ops whose dtype-carrying input is not input 0.
_MAIN_INPUT = {"Where": 1, "If": None, "Loop": None, "Scan": None, "Constant": None, "ConstantOfShape": None, "Range": 0,
               "RandomNormal": None, "RandomUniform": None, "EyeLike": 0, "OneHot": 2}


def op_dtypes(op: str) -> tuple[int | None, frozenset[int] | None]:
    """(index of the input whose dtype is checked or None, the accepted dtypes or None)."""
    types = SUPPORTED_OPS.get(op)
    index = _MAIN_INPUT.get(op, 0)
    return (index if types is not None else None), types
