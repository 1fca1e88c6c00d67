"""ONNX pass ``fuse_attention_layout``: each layer's head reshapes, transposes and KV concats folded
into its fused ``Attention`` (opset 23) on 3-D inputs.

The exported step graph feeds every layer's ``Attention`` 4-D tensors:

    q/k/v [B, S, H*D] -> Reshape [B, S, H, D] -> Transpose [B, H, S, D] -> (q, k) RotaryEmbedding
    present.k = Concat(past.k, k)   present.v = Concat(past.v, v)
    Attention(q, present.k, present.v, mask) [B, H, S, D] -> Transpose -> Reshape [B, S, H*D]

ten small nodes per layer that a decode step pays for in kernel calls (about 300 of a SmolLM2
step's 1400). ONNX's ``Attention`` takes 3-D ``Q/K/V [B, S, H*D]`` (``q_num_heads``,
``kv_num_heads``) with the past as inputs and the present as outputs, and ``RotaryEmbedding``
takes 3-D input with ``num_heads``; the rewrite is

    Attention(RotaryEmbedding(q), RotaryEmbedding(k), v, mask, past.k, past.v) -> y [B, S, H*D], present.k, present.v

Same math, same mask input (the steering bias enters exactly as before), the same graph inputs
and outputs. ONNX Runtime's CPU kernel concatenates the past itself. Layers that do not match
the pattern (shared attention, other exports) are left as they are; a graph where none matches
raises. Run on the step graph after the analysis and selector graphs are derived (they keep the
4-D layout and read the probabilities), and not with ``--kv in-place`` (which rewrites the concats).
For now only engines with quantized weights (``--weights int8|int4``) get it: full-precision step
graphs keep the exported layout, which tools and tests that rewrite a compiled fp32 step graph
(``kv_in_place``'s among them) read.
"""

from __future__ import annotations

import logging

from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass

__all__ = ["fuse_attention_layout", "fuse_attention_layout_file", "rewrite_attention_layout"]

log = logging.getLogger(__name__)

_HEADS_FIRST = [0, 2, 1, 3]


def _perm(node) -> list[int]:
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0] if node.op_type == "Transpose" else []


def rewrite_attention_layout(model) -> dict:
    """Rewrite ``model`` (``onnx.ModelProto``; weights need not be loaded) in place; returns
    ``layers`` (Attention nodes rewritten), ``left`` (not matching) and ``nodes_removed``."""
    from onnx import helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}

    def only(name: str, op: str):
        """The node of type ``op`` that writes ``name``, when ``name`` has no other reader and is no graph output."""
        node = producer.get(name)
        return node if node is not None and node.op_type == op and len(readers.get(name, [])) == 1 and name not in outputs else None

    def unheads(name: str):
        """``name = Transpose[0,2,1,3](Reshape(x3))`` -> (x3, [Reshape, Transpose]) or None."""
        t = only(name, "Transpose")
        r = only(t.input[0], "Reshape") if t is not None and _perm(t) == _HEADS_FIRST else None
        return (r.input[0], [r, t]) if r is not None else None

    dropped, replace, left, layers = set(), {}, 0, 0
    for att in [n for n in graph.node if n.op_type == "Attention"]:
        found = _match(att, only, unheads, producer, readers, inputs, outputs)
        if found is None:
            left += 1
            continue
        (q3, q_rope, q_nodes), (k3, k_rope, k_nodes), (v3, v_nodes), (ck, cv), (out_t, out_r) = found
        heads = {a.name: a.i for a in q_rope.attribute}.get("num_heads"), {a.name: a.i for a in k_rope.attribute}.get("num_heads")
        if not all(heads):
            left += 1
            continue
        stem = att.name or att.output[0]
        ropes = []
        for x3, rope, tag in ((q3, q_rope, "q"), (k3, k_rope, "k")):
            ropes.append(helper.make_node("RotaryEmbedding", [x3, *rope.input[1:]], [f"{stem}/{tag}_rope"], name=f"{stem}/{tag}_rope"))
            ropes[-1].attribute.extend(rope.attribute)
        fused = helper.make_node("Attention", [ropes[0].output[0], ropes[1].output[0], v3, *(att.input[3:4] or [""]), ck.input[0], cv.input[0]],
                                 [out_r.output[0], ck.output[0], cv.output[0]], name=stem, domain=att.domain)
        fused.attribute.extend(a for a in att.attribute if a.name not in ("q_num_heads", "kv_num_heads"))
        fused.attribute.extend([helper.make_attribute("q_num_heads", heads[0]), helper.make_attribute("kv_num_heads", heads[1])])
        for n in (*q_nodes, *k_nodes, *v_nodes, q_rope, k_rope, ck, cv, out_t, out_r):
            dropped.add(id(n))
        replace[id(att)] = [*ropes, fused]
        layers += 1
    if not layers:
        raise RuntimeError(f"no Attention with the 4-D head layout and concatenated KV to fuse ({left} Attention node(s) do not match)")
    new = []
    for n in graph.node:
        if id(n) in replace:
            new += replace[id(n)]
        elif id(n) not in dropped:
            new.append(n)
    removed = len(graph.node) - len(new)
    del graph.node[:]
    graph.node.extend(new)
    return {"layers": layers, "left": left, "nodes_removed": removed}


def _match(att, only, unheads, producer, readers, inputs, outputs):
    """The parts of one layer's pattern around ``att``, or None."""
    if not 3 <= len(att.input) <= 4 or len(att.output) != 1:
        return None  # already has a past, or a probabilities output (the analysis layout)
    q_rope = only(att.input[0], "RotaryEmbedding")
    ck, cv = (_present_concat(att.input[i], att, producer, readers, inputs, outputs) for i in (1, 2))
    if q_rope is None or ck is None or cv is None:
        return None
    k_rope = only(ck.input[1], "RotaryEmbedding")
    q, v = unheads(q_rope.input[0]), unheads(cv.input[1])
    k = unheads(k_rope.input[0]) if k_rope is not None else None
    if q is None or k is None or v is None:
        return None
    out_t, out_r = _sole_reader(att.output[0], "Transpose", readers, outputs), None
    if out_t is not None and _perm(out_t) == _HEADS_FIRST:
        out_r = _sole_reader(out_t.output[0], "Reshape", readers, outputs)
    if out_r is None:
        return None
    return (q[0], q_rope, q[1]), (k[0], k_rope, k[1]), (v[0], v[1]), (ck, cv), (out_t, out_r)


def _sole_reader(name: str, op: str, readers, outputs):
    """The one node reading ``name`` when it is of type ``op`` and ``name`` is no graph output."""
    after = readers.get(name, [])
    return after[0] if len(after) == 1 and after[0].op_type == op and name not in outputs else None


def _present_concat(name: str, att, producer, readers, inputs, outputs):
    """``name = Concat(past, new, axis=-2 or 2)`` with ``past`` a graph input, ``name`` a graph output read only by ``att``."""
    concat = producer.get(name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2 or concat.input[0] not in inputs or name not in outputs:
        return None
    if any(node is not att for node in readers.get(name, [])):
        return None
    axis = [a.i for a in concat.attribute if a.name == "axis"]
    return concat if axis in ([-2], [2]) else None


def fuse_attention_layout_file(path) -> dict:
    """:func:`rewrite_attention_layout` on the ONNX file ``path`` (weights stay in their external file), then ``onnx.checker``."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    report = rewrite_attention_layout(proto)
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path))
    log.info("%s: %d Attention layer(s) on 3-D inputs with the past inside, %d nodes fewer", path.name if hasattr(path, "name") else path,
             report["layers"], report["nodes_removed"])
    return report


@onnx_pass(wanted=lambda settings: settings.weights != "full" and settings.opset >= 23 and settings.attn_implementation == "sdpa" and settings.kv == "concat"
           and not settings.share_attention and settings.target == "onnx")
def fuse_attention_layout(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`fuse_attention_layout_file` on the step graph; the entry is the manifest's ``attention_layout``."""
    return OnnxPassReport("fuse_attention_layout", fuse_attention_layout_file(graph.path))
