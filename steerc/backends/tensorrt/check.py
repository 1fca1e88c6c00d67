"""Static TensorRT-readiness check of an ONNX graph: what TensorRT's ONNX parser would refuse.

The check reads the graph only (never the weights), runs ONNX shape inference to learn dtypes
and ranks, and reports one :class:`Violation` per refused node or attribute. It cannot prove that
TensorRT builds an engine (tactics, memory and plugins are decided at build time), only that the
parser's documented and statically checkable rules hold. The rules:

* ``opset``: the default domain's opset must be in :data:`~steerc.backends.tensorrt.supported_ops.OPSET_RANGE`.
* ``domain``: a node outside the default domain needs a TensorRT plugin (model-local functions
  are fine: the parser inlines them, and their bodies are checked).
* ``unsupported-op``: the op is not in :data:`~steerc.backends.tensorrt.supported_ops.SUPPORTED_OPS`.
* ``dtype``: the op's main input has a data type the parser does not accept for it, or a graph
  tensor has a type TensorRT cannot hold at all.
* ``constant-input``: an input the parser reads at import time (Squeeze/Unsqueeze/Slice/Pad/Reduce*
  axes, CumSum axis, TopK K, Range's floating-point bounds, OneHot depth, Dropout training_mode) is
  not an initializer or Constant; Squeeze without axes needs a static input shape.
* ``attribute``: unsupported attribute values (TopK sorted=0, ScatterND reduction, LSTM layout,
  Resize antialias, pooling dilations, Constant string/sparse values, ...), extra outputs (MaxPool
  indices, LayerNormalization mean/inv_std_dev).
* ``attention.*``: ONNX ``Attention`` as TensorRT imports it: Q, K, V and an optional mask only
  (no past_key/past_value, no nonpad_kv_seqlen), exactly one output (no present_key/present_value,
  no qk_matmul_output), Q/K/V of equal rank 4 (or 3 with q_num_heads/kv_num_heads), a mask of rank
  at most 4 and of Q's dtype (or bool), no nonzero ``softcap``, no ``softmax_precision``, a
  ``qk_matmul_output_mode`` of 0, and ``is_causal`` not combined with a mask.
* ``rotary.position_ids``: ``RotaryEmbedding``'s position_ids must be int64; so must a graph
  input named ``position_ids``.

Only an engine's step graph (``backend.model`` in ``steerc.json``) is meant for TensorRT;
:func:`check_engine` does not check the analysis graph (``analysis.onnx``), which only LLMSteer's
selection runs, through ONNX Runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from steerc.backends.tensorrt.supported_ops import OPSET_RANGE, SUPPORTED_OPS, TENSOR_DTYPES, dtype_name, op_dtypes

__all__ = ["Violation", "check_tensorrt", "check_engine", "CheckResult", "check_model_summary", "engine_model_path"]

log = logging.getLogger(__name__)

FLOAT32, UINT8, INT64, BOOL, FLOAT16 = 1, 2, 7, 9, 10
_DEFAULT_DOMAINS = ("", "ai.onnx")
_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
_RESIZE_COORD = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


@dataclass(frozen=True)
class Violation:
    """One thing TensorRT's ONNX parser would refuse. ``node`` names the node (or ``graph`` /
    ``input NAME``), ``op`` its op type, ``rule`` the rule id (see the module docstring)."""

    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node} ({self.op}): {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class CheckResult:
    """Violations plus what was looked at (for the CLI summary)."""

    violations: list[Violation]
    nodes_checked: int
    ops_seen: dict[str, int]


def node_label(node, index: int) -> str:
    return node.name or f"#{index} -> {node.output[0] if node.output else '?'}"


class _Graph:
    """Name -> (elem_type, rank) and the set of constant names of a (sub)graph and its parents."""

    def __init__(self, graph, parent: _Graph | None = None):
        self.types: dict[str, tuple[int, int | None]] = dict(parent.types) if parent else {}
        self.shapes: dict[str, list | None] = dict(parent.shapes) if parent else {}
        self.constants: set[str] = set(parent.constants) if parent else set()
        for init in graph.initializer:
            self.types[init.name] = (init.data_type, len(init.dims))
            self.shapes[init.name] = list(init.dims)
            self.constants.add(init.name)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            tt = value.type.tensor_type if value.type.HasField("tensor_type") else None
            if tt is None or not tt.elem_type:
                continue
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                self.types.setdefault(value.name, (tt.elem_type, len(dims)))
                self.shapes.setdefault(value.name, dims)
            else:
                self.types.setdefault(value.name, (tt.elem_type, None))
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                self.constants.update(node.output)
                for attr in node.attribute:
                    if attr.name == "value":
                        self.types.setdefault(node.output[0], (attr.t.data_type, len(attr.t.dims)))
                        self.shapes.setdefault(node.output[0], list(attr.t.dims))

    def dtype(self, name: str) -> int | None:
        return self.types.get(name, (None, None))[0] if name else None

    def rank(self, name: str) -> int | None:
        return self.types.get(name, (None, None))[1] if name else None


def _attr(node, name: str, default=None):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _has_attr(node, name: str) -> bool:
    return any(a.name == name for a in node.attribute)


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _load(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        from steerc.errors import SteercError

        raise SteercError(f"{path}: no such ONNX file")
    return onnx.load(str(path), load_external_data=False)


def _infer(model):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best effort: the rules that need it are skipped
        log.warning("ONNX shape inference failed (%s: %s); dtype and rank rules are skipped where unknown", type(exc).__name__, exc)
        return model


def check_tensorrt(model) -> list[Violation]:
    """The violations of TensorRT's ONNX parser rules in ``model`` (a path or a ModelProto;
    external weights are never loaded). An empty list means the graph should import."""
    return check_model_summary(model).violations


def check_model_summary(model) -> CheckResult:
    """:func:`check_tensorrt` plus the number of nodes checked and the ops seen."""
    proto = _infer(_load(model))
    checker = _Checker(proto)
    checker.run()
    return CheckResult(checker.violations, checker.nodes_checked, dict(sorted(checker.ops.items())))


class _Checker:
    def __init__(self, proto):
        self.proto = proto
        self.violations: list[Violation] = []
        self.nodes_checked = 0
        self.ops: dict[str, int] = {}
        self.functions = {(f.domain, f.name): f for f in proto.functions}

    def add(self, node: str, op: str, rule: str, message: str) -> None:
        self.violations.append(Violation(node, op, rule, message))

    def run(self) -> None:
        opsets = {o.domain: o.version for o in self.proto.opset_import}
        default = opsets.get("", opsets.get("ai.onnx"))
        low, high = OPSET_RANGE
        if default is None:
            self.add("graph", "opset_import", "opset", "the model imports no default-domain opset; TensorRT reads opsets 9-24 of the default domain")
        elif not low <= default <= high:
            self.add("graph", "opset_import", "opset", f"default-domain opset {default} is outside the opsets TensorRT's parser reads ({low}-{high}); re-export at an opset in that range")
        graph = _Graph(self.proto.graph)
        for value in self.proto.graph.input:
            dtype = graph.dtype(value.name)
            if value.name == "position_ids" and dtype is not None and dtype != INT64:
                self.add(f"input {value.name}", "graph input", "rotary.position_ids", f"graph input position_ids is {dtype_name(dtype)}; TensorRT's RotaryEmbedding needs int64 position ids")
        for kind, values in (("input", self.proto.graph.input), ("output", self.proto.graph.output)):
            for value in values:
                dtype = graph.dtype(value.name)
                if dtype is None or dtype in TENSOR_DTYPES:
                    continue
                self.add(f"{kind} {value.name}", f"graph {kind}", "dtype", f"graph {kind} {value.name} is {dtype_name(dtype)}, a type TensorRT cannot hold")
        self.check_graph(self.proto.graph, graph)
        for function in self.proto.functions:
            self.check_nodes(function.node, _Graph(_empty_graph()), prefix=f"{function.name}/")

    def check_graph(self, graph_proto, graph: _Graph) -> None:
        self.check_nodes(graph_proto.node, graph)

    def check_nodes(self, nodes, graph: _Graph, prefix: str = "") -> None:
        for index, node in enumerate(nodes):
            self.nodes_checked += 1
            key = f"{node.domain}::{node.op_type}" if node.domain not in _DEFAULT_DOMAINS else node.op_type
            self.ops[key] = self.ops.get(key, 0) + 1
            self.check_node(node, prefix + node_label(node, index), graph)
            for attr in node.attribute:  # If / Loop / Scan bodies
                import onnx

                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
                for sub in subgraphs:
                    self.check_nodes(sub.node, _Graph(sub, graph), prefix=f"{prefix}{node_label(node, index)}/{attr.name}/")

    def check_node(self, node, name: str, g: _Graph) -> None:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            if (node.domain, op) in self.functions:
                return  # a model-local function: its body is checked
            self.add(name, f"{node.domain}::{op}", "domain",
                     f"op {op} of domain {node.domain} is not understood by TensorRT's ONNX parser (only the default domain is, unless a TensorRT plugin named {op} is registered)")
            return
        if op not in SUPPORTED_OPS:
            if ("", op) in self.functions:
                return
            self.add(name, op, "unsupported-op", f"op {op} is not supported by TensorRT's ONNX parser")
            return
        index, types = op_dtypes(op)
        if index is not None and types is not None:
            dtype = g.dtype(_input(node, index))
            if dtype is not None and dtype not in types:
                self.add(name, op, "dtype", f"input {index} ({node.input[index]}) is {dtype_name(dtype)}; TensorRT's {op} accepts {', '.join(sorted(dtype_name(t) for t in types))}")
        for out in node.output:
            dtype = g.dtype(out)
            if dtype is not None and dtype not in TENSOR_DTYPES:
                self.add(name, op, "dtype", f"output {out} is {dtype_name(dtype)}, a type TensorRT cannot hold")
        rule = getattr(self, f"rule_{op}", None)
        if rule is not None:
            rule(node, name, g)
        elif op in _REDUCE:
            self.rule_reduce(node, name, g)

    # -- helpers ---------------------------------------------------------------------------------

    def need_constant(self, node, name: str, g: _Graph, i: int, what: str) -> None:
        tensor = _input(node, i)
        if tensor and tensor not in g.constants:
            self.add(name, node.op_type, "constant-input", f"{what} ({tensor}) is computed at run time; TensorRT's parser needs it as an initializer or Constant (fold it into a constant)")

    # -- static restrictions of the supported list ---------------------------------------------

    def rule_Squeeze(self, node, name, g):
        if _input(node, 1):
            self.need_constant(node, name, g, 1, "Squeeze axes")
        elif not _has_attr(node, "axes"):
            shape = g.shapes.get(node.input[0])
            if shape is None or any(d is None for d in shape):
                self.add(name, "Squeeze", "constant-input", f"Squeeze without axes on {node.input[0]}, whose shape is not static; TensorRT cannot tell which dimensions to squeeze (give the axes explicitly)")

    def rule_Unsqueeze(self, node, name, g):
        if _input(node, 1):
            self.need_constant(node, name, g, 1, "Unsqueeze axes")

    def rule_Slice(self, node, name, g):
        self.need_constant(node, name, g, 3, "Slice axes")

    def rule_Pad(self, node, name, g):
        self.need_constant(node, name, g, 3, "Pad axes")

    def rule_CumSum(self, node, name, g):
        self.need_constant(node, name, g, 1, "CumSum axis")

    def rule_OneHot(self, node, name, g):
        self.need_constant(node, name, g, 1, "OneHot depth")

    def rule_reduce(self, node, name, g):
        self.need_constant(node, name, g, 1, f"{node.op_type} axes")
        dtype = g.dtype(node.input[0])
        if dtype in (BOOL, UINT8):
            self.add(name, node.op_type, "dtype", f"{node.op_type} of a {dtype_name(dtype)} tensor; TensorRT does not reduce bool or uint8")

    def rule_TopK(self, node, name, g):
        self.need_constant(node, name, g, 1, "TopK K")
        if _attr(node, "sorted", 1) != 1:
            self.add(name, "TopK", "attribute", "TopK sorted=0; TensorRT's TopK always sorts (sorted must be 1)")

    def rule_Range(self, node, name, g):
        dtypes = {g.dtype(_input(node, i)) for i in range(3)} - {None}
        if len(dtypes) > 1:
            self.add(name, "Range", "dtype", f"Range start/limit/delta have different types ({', '.join(sorted(dtype_name(t) for t in dtypes))}); TensorRT needs one type")
        if dtypes & {FLOAT32, FLOAT16, 16, 11}:
            for i, what in enumerate(("start", "limit", "delta")):
                self.need_constant(node, name, g, i, f"floating-point Range {what}")

    def rule_Dropout(self, node, name, g):
        if _input(node, 2):
            self.need_constant(node, name, g, 2, "Dropout training_mode")

    def rule_Constant(self, node, name, g):
        for attr in ("sparse_value", "value_string", "value_strings"):
            if _has_attr(node, attr):
                self.add(name, "Constant", "attribute", f"Constant with a {attr} attribute; TensorRT supports numeric values only")

    def rule_LayerNormalization(self, node, name, g):
        if any(node.output[1:]):
            self.add(name, "LayerNormalization", "attribute", "LayerNormalization with a Mean or InvStdDev output; TensorRT supports only the first output Y")

    def rule_MaxPool(self, node, name, g):
        if any(node.output[1:]):
            self.add(name, "MaxPool", "attribute", "MaxPool with an Indices output; TensorRT does not produce it")
        self.rule_AveragePool(node, name, g)

    def rule_AveragePool(self, node, name, g):
        if any(d != 1 for d in _attr(node, "dilations", [])):
            self.add(name, node.op_type, "attribute", f"{node.op_type} dilations {list(_attr(node, 'dilations'))}; TensorRT needs them empty or all ones")
        rank = g.rank(node.input[0])
        if rank is not None and rank not in (4, 5):
            self.add(name, node.op_type, "attribute", f"{node.op_type} on a rank-{rank} tensor; TensorRT pools in 2D or 3D only (rank 4 or 5)")

    def rule_LpPool(self, node, name, g):
        if any(d != 1 for d in _attr(node, "dilations", [])):
            self.add(name, "LpPool", "attribute", "LpPool dilations other than ones; TensorRT needs them empty or all ones")

    def rule_ScatterND(self, node, name, g):
        reduction = _attr(node, "reduction", b"none")
        if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
            self.add(name, "ScatterND", "attribute", f"ScatterND reduction={reduction!r}; TensorRT supports plain scatter only")

    def rule_LSTM(self, node, name, g):
        for attr in ("input_forget", "layout"):
            if _attr(node, attr, 0) != 0:
                self.add(name, "LSTM", "attribute", f"LSTM {attr}={_attr(node, attr)}; TensorRT needs {attr}=0")

    def rule_GridSample(self, node, name, g):
        rank = g.rank(node.input[0])
        if rank is not None and rank != 4:
            self.add(name, "GridSample", "attribute", f"GridSample on a rank-{rank} input; TensorRT needs a 4-D input")

    def rule_EyeLike(self, node, name, g):
        shape = g.shapes.get(node.input[0])
        if shape is not None and any(d is None for d in shape):
            self.add(name, "EyeLike", "attribute", "EyeLike of a dynamically shaped tensor; TensorRT needs static dimensions")

    def rule_Resize(self, node, name, g):
        def s(attr, default):
            value = _attr(node, attr, default)
            return value.decode() if isinstance(value, bytes) else value

        if _attr(node, "antialias", 0):
            self.add(name, "Resize", "attribute", "Resize antialias=1; TensorRT does not antialias")
        if s("mode", "nearest") not in ("nearest", "linear"):
            self.add(name, "Resize", "attribute", f"Resize mode {s('mode', '')}; TensorRT supports nearest and linear")
        if s("coordinate_transformation_mode", "half_pixel") not in _RESIZE_COORD:
            self.add(name, "Resize", "attribute", f"Resize coordinate_transformation_mode {s('coordinate_transformation_mode', '')} is not supported by TensorRT")
        if s("nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
            self.add(name, "Resize", "attribute", f"Resize nearest_mode {s('nearest_mode', '')} is not supported by TensorRT")
        if s("keep_aspect_ratio_policy", "stretch") != "stretch":
            self.add(name, "Resize", "attribute", "Resize keep_aspect_ratio_policy other than stretch is not supported by TensorRT")

    # -- fused transformer ops -------------------------------------------------------------------

    def rule_Attention(self, node, name, g):
        def bad(rule, message):
            self.add(name, "Attention", rule, message)

        if _input(node, 4) or _input(node, 5):
            which = " and ".join(w for w, i in (("past_key", 4), ("past_value", 5)) if _input(node, i))
            bad("attention.past_kv", f"{which} input present: TensorRT's Attention takes no KV cache inputs (inputs 4 and 5) — the KV concat must stay outside the op")
        if _input(node, 6):
            bad("attention.nonpad_kv_seqlen", "nonpad_kv_seqlen input present: TensorRT's Attention does not take it — express padding in the mask")
        if len(node.output) != 1:
            extra = [w for w, i in (("present_key", 1), ("present_value", 2), ("qk_matmul_output", 3)) if len(node.output) > i and node.output[i]]
            detail = f"{', '.join(extra)} output present" if extra else f"{len(node.output)} output slots"
            bad("attention.outputs", f"{detail}: TensorRT's Attention has exactly one output (drop the unused output slots; compute the present KV outside the op)")
        ranks = [g.rank(_input(node, i)) for i in range(3)]
        if None not in ranks:
            if len(set(ranks)) != 1:
                bad("attention.rank", f"Q, K, V have ranks {ranks}; TensorRT needs them equal (4-D, or 3-D with q_num_heads/kv_num_heads)")
            elif ranks[0] == 3 and not (_attr(node, "q_num_heads") and _attr(node, "kv_num_heads")):
                bad("attention.rank", "3-D Q/K/V without q_num_heads and kv_num_heads; TensorRT needs both attributes to reshape them")
            elif ranks[0] not in (3, 4):
                bad("attention.rank", f"Q, K, V have rank {ranks[0]}; TensorRT needs 4-D (or 3-D) inputs")
        mask = _input(node, 3)
        if mask:
            mask_rank, mask_dtype, q_dtype = g.rank(mask), g.dtype(mask), g.dtype(node.input[0])
            if mask_rank is not None and mask_rank > 4:
                bad("attention.mask_rank", f"attn_mask {mask} has rank {mask_rank}; TensorRT needs at most 4 ([B or 1, H or 1, S, P+S])")
            if mask_dtype is not None and q_dtype is not None and mask_dtype != BOOL and mask_dtype != q_dtype:
                bad("attention.mask_dtype", f"attn_mask {mask} is {dtype_name(mask_dtype)} but Q is {dtype_name(q_dtype)}; TensorRT needs a float mask of Q's dtype (or bool)")
            if _attr(node, "is_causal", 0):
                bad("attention.causal_with_mask", "is_causal=1 together with attn_mask; TensorRT cannot combine its causal flag with a mask (fold causality into the mask)")
        softcap = _attr(node, "softcap")
        if softcap:  # TensorRT's op checker tolerates softcap=0 (the default)
            bad("attention.softcap", f"softcap={softcap}; TensorRT's Attention has no logit soft-capping")
        if _has_attr(node, "softmax_precision"):
            bad("attention.softmax_precision", f"softmax_precision={_attr(node, 'softmax_precision')} is set; TensorRT's Attention refuses the attribute")
        if _attr(node, "qk_matmul_output_mode", 0):
            bad("attention.qk_matmul_output_mode", f"qk_matmul_output_mode={_attr(node, 'qk_matmul_output_mode')}; TensorRT produces no qk_matmul_output (mode must be 0)")

    def rule_RotaryEmbedding(self, node, name, g):
        pos = _input(node, 3)
        dtype = g.dtype(pos)
        if pos and dtype is not None and dtype != INT64:
            self.add(name, "RotaryEmbedding", "rotary.position_ids", f"position_ids {pos} is {dtype_name(dtype)}; TensorRT's RotaryEmbedding needs int64")


def _empty_graph():
    import onnx

    return onnx.GraphProto()


def check_engine(folder) -> list[Violation]:
    """Check an engine folder's step graph (``backend.model`` in ``steerc.json``, default
    ``model.onnx``): the graph TensorRT would run. The analysis graph is not checked: only ONNX
    Runtime runs it (LLMSteer's selection), never TensorRT."""
    return check_tensorrt(engine_model_path(folder))


def engine_model_path(folder) -> Path:
    from steerc.engine_format import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, check_files=False)
    return folder / manifest.get("backend", {}).get("model", "model.onnx")
