"""Static TensorRT-readiness check of an ONNX graph: what TensorRT's ONNX parser would refuse.

The check reads the graph only (never the weights), runs ONNX shape inference to learn dtypes
and ranks, and reports one :class:`~steerc.backends.tensorrt.check.violations.Violation` per
refused node or attribute (the rules are listed in
:mod:`~steerc.backends.tensorrt.check.violations`). It cannot prove that TensorRT builds an
engine (tactics, memory and plugins are decided at build time), only that the parser's
documented and statically checkable rules hold.

This module is the driver: the model-level rules (opset, graph inputs and outputs), the walk
over every node (subgraph bodies and model-local functions included) and the checks shared by
every op (domain, supported list, dtypes); the per-op rules are in
:mod:`~steerc.backends.tensorrt.check.node_rules` and
:mod:`~steerc.backends.tensorrt.check.transformer_rules`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steerc.backends.tensorrt.check import node_rules, transformer_rules
from steerc.backends.tensorrt.check.graph import DEFAULT_DOMAINS, INT64, GraphInfo, empty_graph, input_name, node_label
from steerc.backends.tensorrt.check.violations import CheckResult, Violation
from steerc.backends.tensorrt.supported_ops import OPSET_RANGE, SUPPORTED_OPS, TENSOR_DTYPES, dtype_name, op_dtypes

__all__ = ["check_tensorrt", "check_model_summary", "RULES"]

log = logging.getLogger(__name__)

RULES = {**node_rules.RULES, **transformer_rules.RULES}


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
        graph = GraphInfo(self.proto.graph)
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
        self.check_nodes(self.proto.graph.node, graph)
        for function in self.proto.functions:
            self.check_nodes(function.node, GraphInfo(empty_graph()), prefix=f"{function.name}/")

    def check_nodes(self, nodes, graph: GraphInfo, prefix: str = "") -> None:
        for index, node in enumerate(nodes):
            self.nodes_checked += 1
            key = f"{node.domain}::{node.op_type}" if node.domain not in DEFAULT_DOMAINS else node.op_type
            self.ops[key] = self.ops.get(key, 0) + 1
            self.check_node(node, prefix + node_label(node, index), graph)
            for attr in node.attribute:  # If / Loop / Scan bodies
                import onnx

                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
                for sub in subgraphs:
                    self.check_nodes(sub.node, GraphInfo(sub, graph), prefix=f"{prefix}{node_label(node, index)}/{attr.name}/")

    def check_node(self, node, name: str, g: GraphInfo) -> None:
        op = node.op_type
        if node.domain not in DEFAULT_DOMAINS:
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
            dtype = g.dtype(input_name(node, index))
            if dtype is not None and dtype not in types:
                self.add(name, op, "dtype", f"input {index} ({node.input[index]}) is {dtype_name(dtype)}; TensorRT's {op} accepts {', '.join(sorted(dtype_name(t) for t in types))}")
        for out in node.output:
            dtype = g.dtype(out)
            if dtype is not None and dtype not in TENSOR_DTYPES:
                self.add(name, op, "dtype", f"output {out} is {dtype_name(dtype)}, a type TensorRT cannot hold")
        rule = RULES.get(op)
        if rule is not None:
            rule(self.add, node, name, g)
