"""ONNX pass ``fuse_group_query_attention`` (``--attention-op group-query``): each layer's attention
of an in-place step graph as ONNX Runtime's contrib ``GroupQueryAttention``.

After :mod:`~steerc.passes.onnx.kv_in_place` a layer attends with the standard ``Attention`` op::

    q = RotaryEmbedding(Transpose(Reshape(Xq)))            # [B, H, S, D]
    k = TensorScatter(past.key, RotaryEmbedding(Transpose(Reshape(Xk))), P)   # the buffer [B, Hkv, C, D]
    v = TensorScatter(past.value, Transpose(Reshape(Xv)), P)
    y = Reshape(Transpose(Attention(q, k, v, Pad(mask))))   # [B, S, H*D] (Phi-3: a no-op Reshape first)

where ``X*`` are the projections ``[B, S, heads*D]`` and ``mask [B, 1|H, S, P+S]`` is the layer's
causal + padding mask with its steering bias added (``-inf`` where masked), padded with ``-inf``
to the capacity ``C``. ONNX Runtime's CPU ``Attention`` runs one GEMM per query head over all
``C`` keys and reads each KV head once per query head. This pass writes instead::

    y, present.key, present.value = GroupQueryAttention(RotaryEmbedding(Xq), RotaryEmbedding(Xk), Xv,
                                                        past.key, past.value, seqlens_k, total, attention_bias=mask)

* the rotary embeddings run on the 3-D projections (``num_heads`` set), as the standard
  ``RotaryEmbedding`` allows, with the same cos/sin caches, positions and attributes; a norm over
  each head's channels between projection and rotary (``RMSNormalization``, Gemma 3 and Qwen 3's
  query/key norms) runs on ``[B, S, heads, D]`` and is flattened back;
* ``past`` and ``present`` are the same buffer (the runtime binds one ``OrtValue`` as both, as
  for ``TensorScatter``): the op writes the ``S`` new positions at ``P`` itself;
* ``total = P + S`` (``attention_mask.shape[1]``) and ``seqlens_k`` per row the index of its
  last 1 in ``attention_mask``: ``total - 1`` for every left-padded row (the runtime's layout),
  so the kernel attends to ``P + S`` keys, not the capacity, and its causal rule (query ``i``
  sees keys up to ``P + i``) is the one the mask already holds. A row whose mask ends in zeros
  (a *left-aligned* row of ``n`` positions in a wider batch: ones on ``[0, n + S)``) attends to
  its own ``n + S`` keys only and the op writes its new positions at ``n``: the same keys at the
  same indices as the row alone, so a decode batch of rows of different lengths computes each
  row exactly as alone (:mod:`steerc.runtime.decode_batch`; the manifest's
  ``attention.aligned_rows``);
* ``attention_bias`` is the layer's unpadded mask: padding, causality and the steering bias stay
  one additive term, so zero bias equals the unsteered model and a bias equals the explicit mask
  exactly as before (``tests/passes/onnx/test_fuse_group_query_attention.py`` checks both
  against the eager reference).

Measured (docs/BENCHMARKS.md, "A leaner int4 decode step"): one decode step's attention of
SmolLM2-135M, 45 µs against ``Attention``'s 82 at 512 keys. Refused with a clear error
(:class:`EngineError`): a graph without the in-place layout, an ``Attention`` with a softcap,
``is_causal`` or extra outputs, and query/key paths other than the ones above.
"""

from __future__ import annotations

import logging

from steerc.errors import EngineError
from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass
from steerc.passes.onnx.kv_in_place import LAST_KEY, TOTAL

__all__ = ["fuse_group_query_attention", "rewrite_group_query_attention", "group_query_attention_file"]

log = logging.getLogger(__name__)

_PREFIX = "gqa/"  # names of the tensors and nodes the rewrite adds
_HEADS_FIRST = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    """Producers and readers of every tensor of a graph."""

    def __init__(self, graph) -> None:
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)

    def made_by(self, tensor: str, op: str, where: str):
        node = self.producer.get(tensor)
        if node is None or node.op_type != op:
            found = "a graph input" if node is None else f"a {node.op_type} node ({node.name or node.output[0]})"
            raise EngineError(f"group-query attention: {where} comes from {found}, expected {op}; this pass rewrites the in-place "
                              "step graph of rotary decoders (compile without --attention-op group-query)")
        return node

    def only_reader(self, tensor: str, op: str, where: str):
        readers = self.readers.get(tensor, [])
        if len(readers) != 1 or readers[0].op_type != op:
            found = ", ".join(r.op_type for r in readers) or "nothing"
            raise EngineError(f"group-query attention: {where} is read by {found}, expected one {op}; compile without --attention-op group-query")
        return readers[0]


def _heads_first_source(g: _Graph, tensor: str, where: str) -> tuple[str, object | None, object | None, str]:
    """For ``tensor [B, heads, S, D]`` made as ``[RotaryEmbedding]([RMSNormalization](Transpose(Reshape(X))))``:
    the projection ``X [B, S, heads*D]``, the RotaryEmbedding node and the per-head norm node (None
    without them), and the Reshape's output ``[B, S, heads, D]``."""
    rotary = norm = None
    node = g.producer.get(tensor)
    if node is not None and node.op_type == "RotaryEmbedding":
        rotary, tensor = node, node.input[0]
    node = g.producer.get(tensor)
    if node is not None and node.op_type == "RMSNormalization":  # a norm over each head's D channels (Gemma 3, Qwen 3)
        if _attr(node, "axis", -1) not in (-1, 3):
            raise EngineError(f"group-query attention: {where} is normalized over axis {_attr(node, 'axis', -1)}, expected the head's channels (-1)")
        norm, tensor = node, node.input[0]
    transpose = g.made_by(tensor, "Transpose", where)
    if list(_attr(transpose, "perm", [])) != _HEADS_FIRST:
        raise EngineError(f"group-query attention: {where} is transposed by {list(_attr(transpose, 'perm', []))}, expected {_HEADS_FIRST}")
    reshape = g.made_by(transpose.input[0], "Reshape", where)
    return reshape.input[0], rotary, norm, reshape.output[0]


def _normed_3d(norm, heads_last: str, out: str) -> list:
    """``norm`` over each head's channels of ``heads_last [B, S, heads, D]`` (the same weight and
    attributes; the channels are the last axis either way), flattened back to ``[B, S, heads*D]``."""
    import numpy as np
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in norm.attribute}
    return [helper.make_node("RMSNormalization", [heads_last, *norm.input[1:]], [out + "/4d"], name=out + "/norm", **attrs),
            helper.make_node("Constant", [], [out + "/shape"], value=numpy_helper.from_array(np.array([0, 0, -1], np.int64), out + "/shape")),
            helper.make_node("Reshape", [out + "/4d", out + "/shape"], [out], name=out + "/flat")]


def _rotary_3d(rotary, source: str, heads: int, out: str):
    """``rotary`` applied to ``source [B, S, heads*D]`` (``num_heads`` set): the same caches, positions and attributes."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in rotary.attribute}
    attrs["num_heads"] = heads
    return helper.make_node("RotaryEmbedding", [source, *rotary.input[1:]], [out], name=out, **attrs)


def _shared_nodes() -> list:
    """``total`` (int32 scalar, P+S) and ``seqlens_k`` (int32 ``[B]``, per row the index of its last
    1 in ``attention_mask [B, P+S]``: P+S-1 for a left-padded row), cast from the int64 tensors
    ``kv_in_place`` computes for its per-row write index."""
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [TOTAL], [_PREFIX + "total"], to=TensorProto.INT32),  # scalar
            helper.make_node("Cast", [LAST_KEY], [_PREFIX + "seqlens_k"], to=TensorProto.INT32)]  # [B]


def _head_counts(model) -> dict[str, int]:
    """Dimension 1 of every 4-D tensor whose shape inference knows it (the heads of ``[B, H, S, D]``)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    out = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            out[v.name] = (dims[1].dim_value, dims[3].dim_value if dims[3].HasField("dim_value") else None)
    return out


def rewrite_group_query_attention(model) -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto``: an in-place step graph) in place as the module
    docstring says. Returns the manifest entry. Raises :class:`EngineError` when the graph has no
    ``Attention`` over in-place buffers, or one of another form."""
    from onnx import helper

    graph = model.graph
    g = _Graph(graph)
    heads = _head_counts(model)
    sites = [n for n in graph.node if n.op_type == "Attention"]
    if not sites:
        raise EngineError("group-query attention: the step graph has no Attention node to rewrite (was it rewritten already?)")
    replaced: dict[int, list] = {}  # id(node) -> the nodes that take its place
    removed: set[int] = set()
    for i, att in enumerate(sites):
        where = f"layer {i}'s attention ({att.name or att.output[0]})"
        if len(att.input) < 4 or not att.input[3] or _attr(att, "is_causal", 0):
            raise EngineError(f"group-query attention: {where} has no explicit mask (is_causal or no attn_mask)")
        if _attr(att, "softcap", 0.0):
            raise EngineError(f"group-query attention: {where} has a softcap ({_attr(att, 'softcap')}); GroupQueryAttention's softcap is not "
                              "checked against the reference here: compile without --attention-op group-query")
        if any(att.output[1:]):
            raise EngineError(f"group-query attention: {where} has extra outputs (attention probabilities); only the step graph is rewritten")
        k_scatter = g.made_by(att.input[1], "TensorScatter", f"{where}'s keys")
        v_scatter = g.made_by(att.input[2], "TensorScatter", f"{where}'s values")
        pad = g.made_by(att.input[3], "Pad", f"{where}'s mask")
        for scatter in (k_scatter, v_scatter):
            if scatter.input[0] not in {v.name for v in graph.input} or g.readers.get(scatter.output[0]) != [att]:
                raise EngineError(f"group-query attention: {where}: {scatter.output[0]} must be written into a past buffer and read by this Attention only")
        q_source, q_rotary, q_norm, q_4d = _heads_first_source(g, att.input[0], f"{where}'s queries")
        k_source, k_rotary, k_norm, k_4d = _heads_first_source(g, k_scatter.input[1], f"{where}'s keys")
        v_source, v_rotary, v_norm, v_4d = _heads_first_source(g, v_scatter.input[1], f"{where}'s values")
        if v_rotary is not None or (q_rotary is None) != (k_rotary is None):
            raise EngineError(f"group-query attention: {where} rotates {'values' if v_rotary is not None else 'only one of queries and keys'}")
        num_heads, q_dim = heads.get(att.input[0], (None, None))
        kv_heads, k_dim = heads.get(k_scatter.input[1], (None, None))
        if not num_heads or not kv_heads or num_heads % kv_heads or (q_dim and k_dim and q_dim != k_dim):
            raise EngineError(f"group-query attention: {where} has {num_heads} query heads of {q_dim} and {kv_heads} KV heads of {k_dim}; "
                              "GroupQueryAttention needs known head counts, query heads a multiple of KV heads, and one head size")
        out = att.output[0]
        first = g.readers.get(out, [])
        if len(first) == 1 and first[0].op_type == "Reshape" and heads.get(first[0].output[0]) == heads.get(out):  # a no-op view first (Phi-3)
            removed.add(id(first[0]))
            out = first[0].output[0]
        out_transpose = g.only_reader(out, "Transpose", f"{where}'s output")
        if list(_attr(out_transpose, "perm", [])) != _HEADS_FIRST:
            raise EngineError(f"group-query attention: {where}'s output is transposed by {list(_attr(out_transpose, 'perm', []))}, expected {_HEADS_FIRST}")
        out_reshape = g.only_reader(out_transpose.output[0], "Reshape", f"{where}'s transposed output")
        stem = f"{_PREFIX}{i}/"
        nodes = []
        for kind, norm, heads_last in (("q", q_norm, q_4d), ("k", k_norm, k_4d), ("v", v_norm, v_4d)):
            if norm is not None:
                nodes += _normed_3d(norm, heads_last, f"{stem}{kind}_normed")
        q_source = f"{stem}q_normed" if q_norm is not None else q_source
        k_source = f"{stem}k_normed" if k_norm is not None else k_source
        v_source = f"{stem}v_normed" if v_norm is not None else v_source
        if q_rotary is not None:
            nodes += [_rotary_3d(q_rotary, q_source, num_heads, stem + "q"), _rotary_3d(k_rotary, k_source, kv_heads, stem + "k")]
            q_source, k_source = stem + "q", stem + "k"
        scale = _attr(att, "scale")
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [q_source, k_source, v_source, k_scatter.input[0], v_scatter.input[0], _PREFIX + "seqlens_k", _PREFIX + "total", "", "", "", pad.input[0]],
            [out_reshape.output[0], k_scatter.output[0], v_scatter.output[0]], name=stem + "attention", domain="com.microsoft",
            num_heads=num_heads, kv_num_heads=kv_heads, **({} if scale is None else {"scale": float(scale)})))
        replaced[id(att)] = nodes
        removed |= {id(n) for n in (out_transpose, out_reshape, k_scatter, v_scatter)}

    if not {LAST_KEY, TOTAL} <= set(g.producer):
        raise EngineError(f"group-query attention: the in-place step graph has no {LAST_KEY} / {TOTAL} (kv_in_place's per-row last key and total); "
                          "rewrite it with this steerc's kv_in_place first (recompile)")
    shared, kept = _shared_nodes(), []  # the shared casts go before the first GroupQueryAttention: after the kv_in_place nodes they read
    for node in graph.node:
        if id(node) in replaced:
            kept += shared + replaced[id(node)]
            shared = []
        elif id(node) not in removed:
            kept.append(node)
    kept = _live(kept, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    made = {o for n in kept for o in n.output}
    keep = [v for v in graph.value_info if v.name in used or v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.info("group-query attention: %d Attention sites fused into GroupQueryAttention (%d nodes left)", len(sites), len(kept))
    return {"op": "GroupQueryAttention", "sites": len(sites), "nodes": len(kept), "aligned_rows": True}


def _live(nodes: list, outputs: set[str]) -> list:
    """``nodes`` without those whose outputs nothing reads any more (the old transposes, rotaries, pads), in order."""
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


def group_query_attention_file(path) -> dict:
    """:func:`rewrite_group_query_attention` on the ONNX file ``path`` (its weights stay in their
    external data file, minus nothing: the pass adds no weights), then ``onnx.checker``."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    report = rewrite_group_query_attention(proto)
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path))
    return report


@onnx_pass(wanted=lambda settings: settings.attention_op == "group-query")
def fuse_group_query_attention(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`group_query_attention_file` on the step graph (after ``kv_in_place``)."""
    return OnnxPassReport("fuse_group_query_attention", {**group_query_attention_file(graph.path),
                          "meaning": "each layer attends with com.microsoft::GroupQueryAttention over the in-place KV buffers (past and present one "
                          "buffer), its unpadded causal + padding + steering mask as attention_bias; analysis.onnx keeps the standard Attention"})
