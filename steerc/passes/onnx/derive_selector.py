"""ONNX pass ``derive_selector``: the selector graph, the step graph cut down to what evidence selection reads.

The ``query`` steering method runs each question once over the cached context only to read the
attention its *selector heads* pay to the context keys (:mod:`steerc.steering.methods.query`).
The analysis graph (:mod:`~steerc.passes.onnx.derive_analysis`) computes that for every layer and
also the logits (the lm_head: a few layers' worth of work) and the present KV of every layer.
The selector graph keeps only:

* the layers ``0 .. n-1`` (``n``: the manifest's ``selector.layers``, chosen at compile time
  from the engine's shipped head profile, else the fallback selector: one past the last layer
  holding a selector head); the last layer is cut after its attention (no output projection,
  MLP, later layers, final norm or lm_head);
* one output, ``selector_scores [B, len(score_layers), H, P+S]``: for each *score layer* (the
  covered layers holding a selector head; default every covered layer) its fused ``Attention``
  node's softmax probabilities (``qk_matmul_output_mode = 3``: after the mask) summed over the
  call's real query rows, exactly ``attn_importance[:, score_layers]`` of the analysis graph on
  an unsteered call. The other layers' attention runs without returning probabilities (at 2K
  keys that saved a tenth of the graph's time on the default model).

Selection runs the question unsteered, so the steering bias is dropped: each layer's mask
``Where(allowed, bias[l], min)`` becomes one ``Where(allowed, 0, min)`` ``[B, 1, S, P+S]`` shared
by every layer (the same values; the per-layer ``[B, H, S, P+S]`` expansion was a tenth of the
graph's time at 2K keys). A step graph whose masks have another form keeps its ``steer_bias``
input (fed zeros). Everything the output does not depend on is removed: nodes, initializers, and
the inputs of later layers (their past KV), so a session is fed only the inputs it lists. The
weights stay in the step graph's data file. A graph without one fused ``Attention`` node per layer raises
:class:`~steerc.passes.onnx.derive_analysis.NotDerivableError`; the engine then has no selector
graph and selection runs on the analysis graph.
"""

from __future__ import annotations

from pathlib import Path

from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass
from steerc.passes.onnx.derive_analysis import NotDerivableError, _layer_sites, return_probabilities

__all__ = ["SELECTOR_OUTPUT", "derive_selector", "derive_selector_graph"]

SELECTOR_OUTPUT = "selector_scores"


def _used_names(node) -> list[str]:
    """The tensors ``node`` reads, those its subgraphs read from the outer scope included."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {t.name for t in sub.initializer}
            names += [n for sub_node in sub.node for n in _used_names(sub_node) if n not in inner]
    return names


def _topological(nodes: list) -> list:
    """``nodes`` ordered so each comes after the producers of what it reads (stable: the given order where it already is)."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    placed: set[int] = set()
    order: list = []

    def place(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, ready = stack.pop()
            if j in placed:
                continue
            if ready:
                placed.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            stack.extend((producer[n], False) for n in reversed(_used_names(nodes[j])) if n in producer and producer[n] not in placed)

    for i in range(len(nodes)):
        place(i)
    return order


def _prune(graph, keep_outputs: list[str]) -> None:
    """Remove every node, initializer, graph input and value_info the outputs ``keep_outputs`` do not depend on."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    needed, wanted, stack = set(), set(keep_outputs), list(keep_outputs)
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in needed:
            continue
        needed.add(index)
        for name in _used_names(graph.node[index]):
            if name not in wanted:
                wanted.add(name)
                stack.append(name)
    kept = _topological([node for i, node in enumerate(graph.node) if i in needed])
    del graph.node[:]
    graph.node.extend(kept)
    for field in (graph.initializer, graph.input, graph.value_info):
        kept_values = [v for v in field if v.name in wanted]
        del field[:]
        field.extend(kept_values)
    del graph.sparse_initializer[:]  # torch.onnx.export writes none; a kept one would need its own walk


def _unsteered_masks(graph, attention_nodes: list) -> bool:
    """Point each node's mask at ``Where(allowed, 0, fill)`` in place of ``Where(allowed, bias[l], fill)``
    (one node per distinct ``allowed, fill``); False, and nothing changed, where a mask has another form."""
    import numpy as np
    from onnx import helper, numpy_helper

    producer = {out: node for node in graph.node for out in node.output if out}
    initializers = {t.name: t for t in graph.initializer}
    steered, changed = {"steer_bias"}, True
    while changed:  # every tensor computed from steer_bias (nodes are in topological order: one pass suffices, two are cheap)
        changed = False
        for node in graph.node:
            if any(i in steered for i in node.input) and not set(node.output) <= steered:
                steered.update(o for o in node.output if o)
                changed = True
    plan = []
    for node in attention_nodes:
        where = producer.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if where is None or where.op_type != "Where" or where.input[1] not in steered or {where.input[0], where.input[2]} & steered:
            return False
        if where.input[2] not in initializers:
            return False
        plan.append((node, where.input[0], where.input[2]))
    shared: dict[tuple[str, str], str] = {}
    for node, allowed, fill in plan:
        if (allowed, fill) not in shared:
            zero = f"steerc.zero_bias.{len(shared)}"
            graph.initializer.append(numpy_helper.from_array(np.zeros((), numpy_helper.to_array(initializers[fill]).dtype), zero))
            shared[allowed, fill] = f"steerc.unsteered_mask.{len(shared)}"
            graph.node.append(helper.make_node("Where", [allowed, zero, fill], [shared[allowed, fill]]))  # [B, 1, S, P+S]
        node.input[3] = shared[allowed, fill]
    return True


def derive_selector_graph(step_path: Path, out_path: Path, num_layers: int, layers: int, score_layers=()) -> str | None:
    """Write ``out_path`` (its weights: ``step_path``'s data file) from the step graph, covering
    layers ``0 .. layers-1`` and outputting the attention of ``score_layers`` (empty: all of
    them), or return why it cannot be derived (nothing written)."""
    import onnx
    from onnx import TensorProto, helper

    step_path, out_path = Path(step_path), Path(out_path)
    if step_path.parent != out_path.parent:
        raise ValueError("the selector graph must sit beside the step graph to share its data file")
    if not 0 < layers <= num_layers:
        raise ValueError(f"the selector graph covers 1 to {num_layers} layers, not {layers}")
    score_layers = sorted(set(score_layers)) or list(range(layers))
    if score_layers[0] < 0 or score_layers[-1] >= layers:
        raise ValueError(f"the score layers {score_layers} must lie in the covered layers 0..{layers - 1}")
    proto = onnx.load(str(step_path), load_external_data=False)
    graph = proto.graph
    inputs = {i.name: i for i in graph.input}
    if not {"input_ids", "attention_mask", "steer_bias"} <= set(inputs):
        return "the step graph has no input_ids / attention_mask / steer_bias inputs"
    bias_dims = inputs["steer_bias"].type.tensor_type.shape.dim
    if len(bias_dims) != 4 or not bias_dims[2].HasField("dim_value"):
        return "the step graph's steer_bias is not [B, L, H, P+S] with a fixed number of heads"
    heads = bias_dims[2].dim_value
    sites, why = _layer_sites(graph, num_layers)
    if why:
        return why
    kv_type = next((i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values.")), TensorProto.FLOAT)

    def const(name, values):
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    nodes = [  # rows [B, 1, S, 1]: 1.0 for the call's real query rows (left padding counts 0)
        helper.make_node("Shape", ["input_ids"], ["steerc.S"], start=1, end=2),
        helper.make_node("Neg", ["steerc.S"], ["steerc.minus_S"]),
        helper.make_node("Slice", ["attention_mask", "steerc.minus_S", const("steerc.int_max", [2**62]), const("steerc.axis1", [1])], ["steerc.rows_i"]),
        helper.make_node("Cast", ["steerc.rows_i"], ["steerc.rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["steerc.rows_f", const("steerc.axes13", [1, 3])], ["steerc.rows"]),
        # [B, H, S, P+S] from input_ids [B, S] and attention_mask [B, P+S]
        helper.make_node("Shape", ["input_ids"], ["steerc.B"], start=0, end=1),
        helper.make_node("Shape", ["attention_mask"], ["steerc.T"], start=1, end=2),
        helper.make_node("Concat", ["steerc.B", const("steerc.H", [heads]), "steerc.S", "steerc.T"], ["steerc.probs_shape"], axis=0),
    ]
    axis2 = const("steerc.axis2", [2])
    covered = [sites[layer] for layer in range(layers)]
    _unsteered_masks(graph, covered)  # the mask nodes go before the Attention nodes once the graph is sorted below
    per_layer = []
    for layer in score_layers:
        node = sites[layer]
        probs, stem = f"steerc.probs.{layer}", f"steerc.selector_scores.{layer}"
        nodes += [
            return_probabilities(node, probs),  # [B, H, S, P+S]
            *([] if kv_type == TensorProto.FLOAT else [helper.make_node("Cast", [probs], [f"{stem}.f"], to=TensorProto.FLOAT)]),
            helper.make_node("Mul", [probs if kv_type == TensorProto.FLOAT else f"{stem}.f", "steerc.rows"], [f"{stem}.real"]),  # [B, H, S, P+S]
            helper.make_node("ReduceSum", [f"{stem}.real", axis2], [f"{stem}.sum"], keepdims=0),  # [B, H, P+S]
            helper.make_node("Unsqueeze", [f"{stem}.sum", "steerc.axis1"], [f"{stem}.l"]),  # [B, 1, H, P+S]
        ]
        per_layer.append(f"{stem}.l")
    nodes.append(helper.make_node("Concat", per_layer, [SELECTOR_OUTPUT], axis=1))  # [B, n, H, P+S]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(SELECTOR_OUTPUT, TensorProto.FLOAT, ["batch_size", len(score_layers), heads, "total_sequence_length"]))
    _prune(graph, [SELECTOR_OUTPUT])
    missing = {"input_ids", "attention_mask"} - {i.name for i in graph.input}
    if missing:
        return f"the pruned selector graph lost its inputs {sorted(missing)}"
    onnx.save_model(proto, str(out_path))  # initializers keep their external data: the step graph's file
    onnx.checker.check_model(str(out_path))
    return None


@onnx_pass(wanted=lambda settings: settings.importance and settings.attn_implementation == "sdpa" and not settings.share_attention
           and settings.target != "tensorrt")  # its Attention probabilities output breaks TensorRT's parser rules
def derive_selector(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`derive_selector_graph` from ``graph`` (the step graph, before ``kv_in_place``)
    to ``graph.selector_path``, covering ``graph.selector_layers`` layers."""
    if graph.selector_path is None or not graph.selector_layers:
        raise ValueError("derive_selector needs the selector graph's path and layer count (OnnxGraph.selector_path, selector_layers)")
    why = derive_selector_graph(graph.path, graph.selector_path, graph.num_layers, graph.selector_layers, graph.selector_score_layers)
    if why is not None:
        raise NotDerivableError(why)
    score_layers = list(graph.selector_score_layers) or list(range(graph.selector_layers))
    return OnnxPassReport("derive_selector", {"graph": graph.selector_path.name, "from": graph.path.name, "layers": graph.selector_layers,
                                              "score_layers": score_layers})
