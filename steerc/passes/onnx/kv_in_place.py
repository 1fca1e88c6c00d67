"""ONNX pass ``kv_in_place`` (``--kv in-place``): rewrite the exported step graph so the KV cache is updated in place.

The exported graph extends every layer's cache by concat: ``present = Concat(past, new)``
(``[B, Hkv, P, D]`` + ``[B, Hkv, S, D]`` -> ``[B, Hkv, P+S, D]``), so ONNX Runtime copies the
whole past on every decode step. The rewritten graph takes preallocated buffers instead:

* ``past_key_values.{i}.key|value`` are buffers ``[B, Hkv, C, D]`` of capacity ``C >= P+S``
  whose first ``P`` positions hold the cache (the rest must be finite: zeros);
* ``present = TensorScatter(past, new, write_index)`` (opset 24, ``axis=2``) writes the ``S``
  new positions at ``P`` (per row: one past the last 1 of its mask row, minus ``S``; that is ``P``
  for a left-padded row, and a *left-aligned* row of a decode batch, ones on ``[0, n + S)``, writes
  at its own length ``n``: its keys stay at the indices they have alone, so the row computes
  exactly as alone; the manifest's ``attention.aligned_rows``) and has the buffer's shape. ONNX Runtime's CPU kernel skips its copy
  when the output buffer *is* the input buffer, so a runtime that binds one ``OrtValue`` as
  both ``past`` and ``present`` (IO binding) updates the cache in place;
* ``P`` is no longer a tensor's shape: it is ``attention_mask.shape[1] - input_ids.shape[1]``.
  Every ``Shape(past)`` of the exported graph (the causal/padding mask subgraph reads ``P``
  from it) reads that instead, so the mask is built over absolute positions exactly as
  before, ``[.., S, P+S]``;
* each ``Attention`` that reads a buffer gets its mask padded from ``P+S`` to ``C`` keys with
  ``-inf`` (``False`` for a boolean mask): unwritten slots get probability 0, and real keys
  see exactly the logits they saw before.

The other inputs (``attention_mask [B, P+S]``, ``steer_bias [B, L, H, P+S]``) and ``logits``
are unchanged. The rewrite works on the ``ModelProto`` alone (weights stay external).
"""

from __future__ import annotations

import logging

from steerc.errors import EngineError
from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass

__all__ = ["kv_in_place", "rewrite_kv_in_place", "kv_in_place_file", "in_place_specs", "CAPACITY_DIM", "IN_PLACE_OPSET", "LAST_KEY", "TOTAL"]

log = logging.getLogger(__name__)

CAPACITY_DIM = "kv_capacity"  # the buffers' sequence dimension (C)
IN_PLACE_OPSET = 24  # TensorScatter
_PAST, _PRESENT = "past_key_values.", "present."
_PREFIX = "kv_in_place/"  # names of the tensors and nodes the rewrite adds
# Tensors of the rewritten graph that later passes read (fuse_group_query_attention's seqlens_k and total):
LAST_KEY = _PREFIX + "last"  # int64 [B]: per row the index of the last 1 in attention_mask
TOTAL = _PREFIX + "total_scalar"  # int64 scalar: P+S, attention_mask.shape[1]


def _ints(name: str, values):
    from onnx import helper, TensorProto

    return helper.make_tensor(name, TensorProto.INT64, [len(values)], list(values))


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _position_nodes(ids_input: str, mask_input: str, capacity_of: str) -> list:
    """Nodes computing ``P`` ([1]), the write index ``[B]``, ``P+S`` and ``C - (P+S)`` ([1] each).

    A row's write index is one past the last 1 of its ``attention_mask`` row, minus ``S``: ``P`` for
    a left-padded row (its mask ends in the S new ones), the row's own length ``n`` for a
    left-aligned row of a decode batch (ones on ``[0, n + S)``, zeros after), so such a row keeps its
    keys at the indices it has alone (clamped at 0)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    p = _PREFIX

    def const(name: str, value) -> object:
        return helper.make_node("Constant", [], [p + name], value=numpy_helper.from_array(np.asarray(value, np.int64), p + name))

    return [
        helper.make_node("Shape", [ids_input], [p + "batch"], start=0, end=1),  # [1] = B
        helper.make_node("Shape", [ids_input], [p + "new"], start=1, end=2),  # [1] = S
        helper.make_node("Shape", [mask_input], [p + "total"], start=1, end=2),  # [1] = P+S
        helper.make_node("Sub", [p + "total", p + "new"], [p + "past"]),  # [1] = P
        const("axis0", [0]),
        const("zero", 0),
        const("one", 1),
        helper.make_node("Squeeze", [p + "total", p + "axis0"], [TOTAL]),
        helper.make_node("Range", [p + "zero", TOTAL, p + "one"], [p + "key_index"]),  # [P+S] = 0, 1, ...
        helper.make_node("Cast", [mask_input], [p + "mask64"], to=TensorProto.INT64),
        helper.make_node("Mul", [p + "mask64", p + "key_index"], [p + "kept_index"]),  # [B, P+S]: the index where 1, else 0
        const("key_axis", [1]),
        helper.make_node("ReduceMax", [p + "kept_index", p + "key_axis"], [LAST_KEY], keepdims=0),  # [B]
        helper.make_node("Add", [LAST_KEY, p + "one"], [p + "end"]),  # [B] one past the last 1
        helper.make_node("Sub", [p + "end", p + "new"], [p + "start"]),
        helper.make_node("Max", [p + "start", p + "zero"], [p + "write_index"]),  # [B]
        helper.make_node("Shape", [capacity_of], [p + "capacity"], start=2, end=3),  # [1] = C
        helper.make_node("Sub", [p + "capacity", p + "total"], [p + "unwritten"]),  # [1] = C - (P+S)
    ]


def _virtual_shape(node, kv_heads: int, head_dim: int) -> list:
    """Nodes replacing ``Shape(past)``: the shape the concat graph's past had, ``[B, Hkv, P, D]``,
    sliced by the node's ``start``/``end``."""
    from onnx import helper

    p, out = _PREFIX, node.output[0]
    start, end = _attr(node, "start", 0), _attr(node, "end", 4)
    if (start, end) == (2, 3):  # what the exported mask subgraph reads: P
        return [helper.make_node("Identity", [p + "past"], [out], name=p + out)]
    return [
        helper.make_node("Constant", [], [out + "/kv_heads"], value=_ints(out + "/kv_heads", [kv_heads])),
        helper.make_node("Constant", [], [out + "/head_dim"], value=_ints(out + "/head_dim", [head_dim])),
        helper.make_node("Concat", [p + "batch", out + "/kv_heads", p + "past", out + "/head_dim"], [out + "/full"], axis=0),
        helper.make_node("Constant", [], [out + "/starts"], value=_ints(out + "/starts", [start])),
        helper.make_node("Constant", [], [out + "/ends"], value=_ints(out + "/ends", [end])),
        helper.make_node("Slice", [out + "/full", out + "/starts", out + "/ends"], [out]),
    ]


def _pad_mask(mask: str, rank: int, elem_type: int) -> tuple[str, list]:
    """A mask of ``[.., P+S]`` keys padded to ``[.., C]`` with ``-inf`` (``False`` if boolean)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    p = _PREFIX
    out = f"{p}{mask}/padded"
    if elem_type == TensorProto.BOOL:
        fill = np.array(False)
    elif elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        fill = np.array(-np.inf, helper.tensor_dtype_to_np_dtype(elem_type))
    else:
        raise EngineError(f"kv in-place: attention mask {mask} has element type {TensorProto.DataType.Name(elem_type)}; expected bool or float")
    zeros = _ints(f"{out}/zeros", [0] * (2 * rank - 1))
    nodes = [
        helper.make_node("Constant", [], [f"{out}/zeros"], value=zeros),
        helper.make_node("Concat", [f"{out}/zeros", p + "unwritten"], [f"{out}/pads"], axis=0),  # pad only the end of the key axis
        helper.make_node("Constant", [], [f"{out}/fill"], value=numpy_helper.from_array(fill, f"{out}/fill")),
        helper.make_node("Pad", [mask, f"{out}/pads", f"{out}/fill"], [out], mode="constant"),
    ]
    return out, nodes


def _tensor_types(model) -> dict[str, tuple[int, int]]:
    """Element type and rank of every tensor shape inference can type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    out = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = (t.elem_type, len(t.shape.dim))
    return out


def rewrite_kv_in_place(model, ids_input: str = "input_ids", mask_input: str = "attention_mask") -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto`` of a step graph with the concat KV contract,
    opset 23 or 24) in place as described in the module docstring. Returns a report for the
    manifest. Raises :class:`EngineError` when the graph does not have the expected form
    (e.g. a past tensor read by something other than its concat or a ``Shape``, an
    ``Attention`` over a buffer without a mask, or a present read by a non-``Attention``
    node, as in shared-attention graphs)."""
    from onnx import helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset not in (23, 24):
        raise EngineError(f"kv in-place needs an opset-23 or -24 step graph (fused Attention), got opset {opset}; compile with --opset 23")
    pasts = [v for v in graph.input if v.name.startswith(_PAST)]
    presents = {v.name for v in graph.output if v.name.startswith(_PRESENT)}
    if not pasts:
        raise EngineError("kv in-place: the graph has no past_key_values inputs")
    consumers = _consumers(graph)
    past_dims = pasts[0].type.tensor_type.shape.dim
    kv_heads, head_dim = past_dims[1].dim_value, past_dims[3].dim_value
    types = _tensor_types(model)

    replaced: dict[int, list] = {}  # node index -> replacement nodes
    index = {id(n): i for i, n in enumerate(graph.node)}
    buffers: set[str] = set()
    for past in pasts:
        present = _PRESENT + past.name[len(_PAST):]
        if present not in presents:
            raise EngineError(f"kv in-place: input {past.name} has no output {present}")
        for node in consumers.get(past.name, []):
            if (node.op_type == "Concat" and len(node.input) == 2 and node.input[0] == past.name and list(node.output) == [present]
                    and _attr(node, "axis", None) in (2, -2)):
                replaced[index[id(node)]] = [helper.make_node("TensorScatter", [past.name, node.input[1], _PREFIX + "write_index"], [present],
                                                              name=_PREFIX + present, axis=2)]
            elif node.op_type == "Shape":
                replaced[index[id(node)]] = _virtual_shape(node, kv_heads, head_dim)
            else:
                raise EngineError(f"kv in-place: {past.name} is read by a {node.op_type} node ({node.name or node.output[0]}); "
                                  "only its concat into the present and Shape are supported")
        if not any(r[0].op_type == "TensorScatter" and r[0].output[0] == present for r in replaced.values()):
            raise EngineError(f"kv in-place: no Concat({past.name}, new) -> {present} along the sequence axis")
        buffers.add(present)

    padded: dict[str, str] = {}  # mask -> padded mask
    pads: dict[str, list] = {}  # padded mask -> the nodes computing it
    attention_sites = 0
    for node in graph.node:
        reads = [name for name in node.input if name in buffers]
        if not reads:
            continue
        if node.op_type != "Attention" or list(node.input)[1:3] != reads or len(reads) != 2:
            raise EngineError(f"kv in-place: {', '.join(reads)} is read by a {node.op_type} node ({node.name or node.output[0]}); "
                              "only Attention(q, present.key, present.value, mask) is supported (shared attention is not)")
        if len(node.input) < 4 or not node.input[3] or _attr(node, "is_causal", 0):
            raise EngineError(f"kv in-place: Attention {node.name or node.output[0]} has no explicit mask over absolute positions (is_causal or no attn_mask)")
        mask = node.input[3]
        if mask not in padded:
            if mask not in types:
                raise EngineError(f"kv in-place: shape inference gives no type for attention mask {mask}")
            elem_type, rank = types[mask]
            padded[mask], pads[padded[mask]] = _pad_mask(mask, rank, elem_type)
        node.input[3] = padded[mask]
        attention_sites += 1

    nodes = _position_nodes(ids_input, mask_input, pasts[0].name)
    for i, node in enumerate(graph.node):
        nodes += replaced.get(i, [node])
    nodes = _insert_before_first_use(nodes, pads)
    del graph.node[:]
    graph.node.extend(nodes)

    for v in (*pasts, *(o for o in graph.output if o.name in buffers)):
        dim = v.type.tensor_type.shape.dim[2]
        dim.Clear()
        dim.dim_param = CAPACITY_DIM
    keep = [v for v in graph.value_info if v.name not in buffers]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = IN_PLACE_OPSET
    log.info("kv in-place: %d caches scatter into their buffers, %d attention masks padded to the capacity", len(buffers), len(padded))
    return {"layout": "in-place", "buffers": len(buffers), "attention_sites": attention_sites, "opset": IN_PLACE_OPSET}


def _insert_before_first_use(nodes: list, groups: dict[str, list]) -> list:
    """``nodes`` with each group of ``groups`` (the nodes computing the named tensor) inserted
    right before the first node that reads that tensor."""
    out, done = [], set()
    for node in nodes:
        for name in node.input:
            if name in groups and name not in done:
                out += groups[name]
                done.add(name)
        out.append(node)
    return out


def kv_in_place_file(path) -> dict:
    """:func:`rewrite_kv_in_place` on the ONNX file ``path`` (its weights stay in their external data
    file), then ``onnx.checker``. Returns the report."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    report = rewrite_kv_in_place(proto)
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path))
    return report


def in_place_specs(specs: list) -> list:
    """The engine contract's specs with the KV sequence dimension renamed to :data:`CAPACITY_DIM`."""
    from steerc.capture.io_spec import TensorSpec

    return [TensorSpec(s.name, s.dtype, (*s.dims[:2], CAPACITY_DIM, *s.dims[3:])) if s.name.startswith((_PAST, _PRESENT)) else s for s in specs]


@onnx_pass(wanted=lambda settings: settings.kv == "in-place")
def kv_in_place(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`kv_in_place_file` on the step graph; the entry is the manifest's ``kv``."""
    return OnnxPassReport("kv_in_place", {**kv_in_place_file(graph.path), "capacity_dim": CAPACITY_DIM,
                          "meaning": f"past_key_values.* are buffers [B, Hkv, {CAPACITY_DIM}, D] whose first P = attention_mask.shape[1] - input_ids.shape[1] "
                          "positions hold the cache; present.* are the same buffers with the S new positions written at P (bind one OrtValue as both "
                          "to update it in place); attention_mask and steer_bias still cover P+S keys. analysis.onnx keeps the concat layout"})
