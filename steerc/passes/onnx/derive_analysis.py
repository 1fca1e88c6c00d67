"""ONNX pass ``derive_analysis``: the analysis graph derived from the exported step graph.

The analysis graph is the step graph plus two outputs (see
:mod:`steerc.passes.capture_attention_importance` and :mod:`steerc.passes.capture_query_vectors`
for their meaning, which this derivation keeps):

* ``attn_importance [B, L, H, P+S]``: each fused ``Attention`` node (opset 23) also returns its
  softmax probabilities (``qk_matmul_output_mode = 3``: after the mask, which carries the
  steering bias, and the softmax), ``[B, H, S, P+S]``, summed over the call's real query rows.
* ``attn_queries [B, L, H, D]``: the node's query input (after the rotary embedding, before the
  scale), ``[B, H, S, D]``, summed over the same rows.

Real rows are ``attention_mask[:, -S:]`` (left padding counts 0), ``S = input_ids.shape[1]``;
prefill and decode calls are handled alike (a decode step sums its one row). Everything else,
logits and KV included, is the step graph itself, so context preparation computes exactly the
KV the step graph would; the weights stay in the step graph's data file.

Exporting the analysis program a second time took 60 of a 128 s compile; this takes seconds.
Graphs it cannot derive from (layers without their own ``Attention`` node: eager attention,
shared attention) raise :class:`NotDerivableError` with the reason, and the compile exports the
analysis program instead (a compile with eager or shared attention does not run the pass).
A ``--target tensorrt`` compile does not run it either: TensorRT's parser refuses the fourth
(probabilities) output of ``Attention``, so that compile exports the analysis program, whose
softmax probabilities are explicit ops, and makes it TensorRT-ready like the step graph.
"""

from __future__ import annotations

import re
from pathlib import Path

from steerc.errors import PassError
from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass

__all__ = ["NotDerivableError", "derive_analysis", "derive_analysis_graph", "return_probabilities"]

_PRESENT_KEY = re.compile(r"present\.(\d+)\.key")


def _layer_sites(graph, num_layers: int) -> tuple[dict[int, object], str | None]:
    """Layer -> its Attention node, found by the ``present.{l}.key`` it attends over."""
    sites: dict[int, object] = {}
    for node in graph.node:
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        if any(a.name in ("q_num_heads", "kv_num_heads") for a in node.attribute):
            return {}, f"Attention node {node.name} takes 3-D [B, S, H*D] inputs"
        match = _PRESENT_KEY.fullmatch(node.input[1]) if len(node.input) > 1 else None
        if match is None or len(node.input) > 4 and any(node.input[4:]):
            return {}, f"Attention node {node.name} does not attend over a present.<l>.key output"
        layer = int(match.group(1))
        if layer in sites:
            return {}, f"layer {layer} has two Attention nodes"
        sites[layer] = node
    missing = sorted(set(range(num_layers)) - set(sites))
    if missing:
        return {}, f"layers {missing} have no fused Attention node of their own (eager or shared attention)"
    return sites, None


def return_probabilities(node, name: str):
    """Make the fused ``Attention`` ``node`` also return its softmax probabilities
    (``qk_matmul_output_mode = 3``: after the mask, which carries the steering bias, and the
    softmax) and return the node that names them ``name`` ``[B, H, S, P+S]``: ONNX's Attention
    shape inference sizes that output's key axis 0 when there are no past inputs, and ONNX Runtime
    then warns on every call, so a no-op Reshape to the shape read from the inputs
    (``steerc.probs_shape``, which the caller makes) replaces the wrong static size."""
    from onnx import helper

    while len(node.output) < 4:
        node.output.append("")
    node.output[3] = f"{name}.raw"
    for attr in node.attribute:
        if attr.name == "qk_matmul_output_mode":
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute("qk_matmul_output_mode", 3))
    return helper.make_node("Reshape", [f"{name}.raw", "steerc.probs_shape"], [name])


class NotDerivableError(PassError):
    """The step graph does not have the form the analysis graph is derived from; the message says why."""


def derive_analysis_graph(step_path: Path, out_path: Path, num_layers: int, outputs) -> str | None:
    """Write ``out_path`` (its weights: ``step_path``'s data file) from the step graph, or return
    why it cannot be derived (nothing written). ``outputs``: the TensorSpecs of the analysis
    outputs after the step graph's (``attn_importance``, optionally ``attn_queries``)."""
    import onnx
    from onnx import TensorProto, helper


    step_path, out_path = Path(step_path), Path(out_path)
    if step_path.parent != out_path.parent:
        raise ValueError("the analysis graph must sit beside the step graph to share its data file")
    proto = onnx.load(str(step_path), load_external_data=False)
    graph = proto.graph
    step_outputs = [o.name for o in graph.output]
    if [s.name for s in outputs[: len(step_outputs)]] != step_outputs:
        return "the analysis outputs do not start with the step graph's"
    outputs = outputs[len(step_outputs):]
    names = [s.name for s in outputs]
    if names not in (["attn_importance"], ["attn_importance", "attn_queries"]):
        return f"unknown analysis outputs {names}"
    inputs = {i.name for i in graph.input}
    if not {"input_ids", "attention_mask"} <= inputs:
        return "the step graph has no input_ids / attention_mask inputs"
    sites, why = _layer_sites(graph, num_layers)
    if why:
        return why

    def const(name, values):
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    nodes = [  # rows [B, 1, S, 1]: 1.0 for the call's real query rows
        helper.make_node("Shape", ["input_ids"], ["steerc.S"], start=1, end=2),
        helper.make_node("Neg", ["steerc.S"], ["steerc.minus_S"]),
        helper.make_node("Slice", ["attention_mask", "steerc.minus_S", const("steerc.int_max", [2**62]), const("steerc.axis1", [1])], ["steerc.rows_i"]),
        helper.make_node("Cast", ["steerc.rows_i"], ["steerc.rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["steerc.rows_f", const("steerc.axes13", [1, 3])], ["steerc.rows"]),
    ]
    axis2, axis1 = const("steerc.axis2", [2]), "steerc.axis1"
    heads = outputs[0].dims[2]
    nodes += [  # [B, H, S, P+S] from input_ids [B, S] and attention_mask [B, P+S]
        helper.make_node("Shape", ["input_ids"], ["steerc.B"], start=0, end=1),
        helper.make_node("Shape", ["attention_mask"], ["steerc.T"], start=1, end=2),
        helper.make_node("Concat", ["steerc.B", const("steerc.H", [heads]), "steerc.S", "steerc.T"], ["steerc.probs_shape"], axis=0),
    ]
    per_output = {"attn_importance": [], "attn_queries": []}
    for layer in range(num_layers):
        node = sites[layer]
        probs = f"steerc.probs.{layer}"
        nodes.append(return_probabilities(node, probs))
        for out, source in (("attn_importance", probs), ("attn_queries", node.input[0])):
            if out not in names:
                continue
            stem = f"steerc.{out}.{layer}"
            nodes += [
                helper.make_node("Cast", [source], [f"{stem}.f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{stem}.f", "steerc.rows"], [f"{stem}.real"]),  # [B, H, S, T|D]
                helper.make_node("ReduceSum", [f"{stem}.real", axis2], [f"{stem}.sum"], keepdims=0),  # [B, H, T|D]
                helper.make_node("Unsqueeze", [f"{stem}.sum", axis1], [f"{stem}.l"]),  # [B, 1, H, T|D]
            ]
            per_output[out].append(f"{stem}.l")
    for spec in outputs:
        nodes.append(helper.make_node("Concat", per_output[spec.name], [spec.name], axis=1))  # [B, L, H, T|D]
        graph.output.append(helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, list(spec.dims)))
    graph.node.extend(nodes)
    onnx.save_model(proto, str(out_path))  # initializers keep their external data: the step graph's file
    onnx.checker.check_model(str(out_path))
    return None


@onnx_pass(wanted=lambda settings: settings.importance and settings.attn_implementation == "sdpa" and not settings.share_attention
           and settings.target != "tensorrt")
def derive_analysis(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`derive_analysis_graph` from ``graph`` (the step graph) to ``graph.analysis_path``."""
    if graph.analysis_path is None:
        raise ValueError("derive_analysis needs the analysis graph's path (OnnxGraph.analysis_path)")
    why = derive_analysis_graph(graph.path, graph.analysis_path, graph.num_layers, graph.analysis_outputs)
    if why is not None:
        raise NotDerivableError(why)
    return OnnxPassReport("derive_analysis", {"graph": graph.analysis_path.name, "from": graph.path.name})
