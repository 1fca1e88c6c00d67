"""ONNX pass ``keep_last_logits`` (``--logits last``, the default): the LM head runs on the final position only.

The exported step graph returns ``logits [B, S, V]``: the head's MatMul (49152 x 576 on
SmolLM2-135M, a fifth of a token's multiply-adds) runs for every prompt position, and the
``B x S x V`` floats are written out, though generation reads only the last row (llama.cpp and
vLLM compute the sampled positions only). This pass slices the head's input to its last position::

    logits = Head(h)                                   # h [B, S, K]  ->  [B, S, V]
    logits = Head(Slice(h, starts=-1, axes=1))         #              ->  [B, 1, V]

where ``Head`` is the ``MatMul`` / ``MatMulNBits`` that makes ``logits``, followed by any chain of
elementwise ops with constant operands (a final softcap). Every other output (the present KV, an
analysis graph's importances derived after this pass) is unchanged, and the last row of the
logits is the same computation as before (the head is row-wise). A decode step (``S = 1``) is
untouched. Measured on SmolLM2-135M (``tools/bench_decode.py``, each engine against the same
build with ``--logits all`` in one run; docs/BENCHMARKS.md): time to first token 1.11x faster
(fp32) and 1.07x (int4 + int8 cache) at 512 and 2016 tokens; decode unchanged.

Callers that score every position (teacher forcing) compile with ``--logits all`` or feed one
token per call. Raises when ``logits`` is not made by such a head, or is already one position.
"""

from __future__ import annotations

import logging

from steerc.errors import EngineError
from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass, save_proto

__all__ = ["keep_last_logits", "keep_last_logits_model", "LOGITS"]

log = logging.getLogger(__name__)

LOGITS = "logits"
_HEADS = {"MatMul", "MatMulNBits"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Tanh", "Cast"}  # a softcap (x / c -> tanh -> * c) or a dtype cast after the head
_PREFIX = "keep_last_logits/"


def _head(graph) -> tuple[object, list[str]]:
    """The node computing the LM head and the tensors from its output to ``logits`` (both included)."""
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    tensor, chain = LOGITS, []
    while True:
        node = producer.get(tensor)
        if node is None:
            raise EngineError(f"keep_last_logits: {tensor!r} is a graph input, not made by an LM head; compile with --logits all")
        chain.append(tensor)
        if node.op_type in _HEADS:
            return node, chain
        variable = [i for i in node.input if i and i not in constants]
        if node.op_type not in _ELEMENTWISE or len(variable) != 1:
            raise EngineError(f"keep_last_logits: the logits come from a {node.op_type} node ({node.name or node.output[0]}), not an LM head "
                              "MatMul followed by elementwise ops; compile with --logits all")
        tensor = variable[0]


def keep_last_logits_model(model) -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto``; weights need not be loaded) in place; returns the manifest entry."""
    from onnx import TensorProto, helper

    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if LOGITS not in outputs:
        raise EngineError(f"keep_last_logits: the graph has no {LOGITS!r} output")
    dims = outputs[LOGITS].type.tensor_type.shape.dim
    if len(dims) != 3:
        raise EngineError(f"keep_last_logits: {LOGITS!r} has {len(dims)} dimensions, expected [batch, positions, vocabulary]")
    if dims[1].HasField("dim_value") and dims[1].dim_value == 1:
        raise EngineError(f"keep_last_logits: {LOGITS!r} already holds one position (the pass ran); nothing to rewrite")
    head, chain = _head(graph)
    hidden, last = head.input[0], _PREFIX + "hidden"
    graph.initializer.extend([helper.make_tensor(_PREFIX + "starts", TensorProto.INT64, [1], [-1]),
                              helper.make_tensor(_PREFIX + "ends", TensorProto.INT64, [1], [2**63 - 1]),
                              helper.make_tensor(_PREFIX + "axes", TensorProto.INT64, [1], [1])])
    nodes = list(graph.node)
    at = nodes.index(head)
    nodes.insert(at, helper.make_node("Slice", [hidden, _PREFIX + "starts", _PREFIX + "ends", _PREFIX + "axes"], [last], name=_PREFIX + "slice"))
    head.input[0] = last
    del graph.node[:]
    graph.node.extend(nodes)
    stale = set(chain)  # their recorded shapes had S positions
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    dims[1].Clear()
    dims[1].dim_value = 1
    return {"positions": "last", "head": head.op_type, "head_node": head.name or head.output[0]}


@onnx_pass(lambda settings: settings.logits == "last")
def keep_last_logits(graph: OnnxGraph, settings) -> OnnxPassReport:
    """``--logits last``: ``logits`` of the step graph at ``graph.path`` for the final position only."""
    import onnx

    model = onnx.load(str(graph.path), load_external_data=False)
    entry = keep_last_logits_model(model)
    save_proto(model, graph.path)  # the proto only: the weights stay in the data file beside it
    onnx.checker.check_model(str(graph.path))
    log.info("keep_last_logits: the LM head (%s) runs on the last position only", entry["head"])
    return OnnxPassReport("keep_last_logits", entry)
