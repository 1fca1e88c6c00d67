"""Experiment (issue 26, measured, not yet a pass): an in-place int4 engine's attention as ONNX
Runtime's contrib ``GroupQueryAttention`` with its additive bias.

Per layer, ``RotaryEmbedding`` on ``[B, H, S, D]`` (after Reshape + Transpose of the projection),
two ``TensorScatter`` into the KV buffers, the standard ``Attention`` over the padded buffer and
the output Transpose + Reshape become ``RotaryEmbedding`` on the projections' ``[B, S, H*D]``
and one ``GroupQueryAttention`` (past and present the same buffer, ``seqlens_k = total - 1`` for
every row, ``attention_bias`` the layer's unpadded bias-and-mask ``[B, H, S, total]``): 1542 →
1255 nodes on SmolLM2 int4. One op reads each KV head once for its query heads.

    PYTHONPATH=. python tools/exp_gqa_attention.py engines/smollm2-int4-inplace /tmp/int4-gqa
    PYTHONPATH=. python tools/bench_decode.py engines/smollm2-int4 --contexts 512 2016 --batches 1 \\
        --variants steerc llama.cpp --compare inplace=engines/smollm2-int4-inplace gqa=/tmp/int4-gqa --threads 2

Writes a copy of the engine folder with the rewritten step graph (manifest re-hashed).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def rewrite(src: Path, dst: Path) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from steerc.engine_format import write_manifest

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
    model = onnx.load(src / "model.onnx")
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    attr = lambda n, k: next(helper.get_attribute_value(a) for a in n.attribute if a.name == k)  # noqa: E731
    inits = [numpy_helper.from_array(np.array([1], np.int32), "gqa/one")]
    nodes = [  # once: total_sequence_length (int32 scalar) and seqlens_k = total - 1 per row
        helper.make_node("Shape", ["attention_mask"], ["gqa/total64"], start=1, end=2),
        helper.make_node("Cast", ["gqa/total64"], ["gqa/total1"], to=TensorProto.INT32),
        helper.make_node("Squeeze", ["gqa/total1"], ["gqa/total"]),
        helper.make_node("Sub", ["gqa/total1", "gqa/one"], ["gqa/last"]),
        helper.make_node("Shape", ["input_ids"], ["gqa/batch"], start=0, end=1),
        helper.make_node("Expand", ["gqa/last", "gqa/batch"], ["gqa/seqlens"]),
    ]
    removed = set()
    layers = [n for n in graph.node if n.op_type == "Attention"]
    for i, att in enumerate(layers):
        q_rot, k_scatter, v_scatter, pad = (producer[x] for x in att.input[:4])
        if (q_rot.op_type, k_scatter.op_type, v_scatter.op_type, pad.op_type) != ("RotaryEmbedding", "TensorScatter", "TensorScatter", "Pad"):
            raise SystemExit(f"{att.name}: not the in-place layout this experiment rewrites (compile with --kv in-place)")
        k_rot = producer[k_scatter.input[1]]
        projection = lambda t: producer[producer[t.input[0]].input[0]].input[0]  # noqa: E731  Transpose <- Reshape <- [B, S, H*D]
        q3, k3, v3 = projection(q_rot), projection(k_rot), producer[producer[v_scatter.input[1]].input[0]].input[0]
        out_transpose = readers[att.output[0]][0]
        out_reshape = readers[out_transpose.output[0]][0]
        H, Hkv, stem = attr(q_rot, "num_heads"), attr(k_rot, "num_heads"), f"gqa{i}/"
        nodes += [
            helper.make_node("RotaryEmbedding", [q3, *q_rot.input[1:]], [stem + "q"], num_heads=H, interleaved=attr(q_rot, "interleaved")),
            helper.make_node("RotaryEmbedding", [k3, *k_rot.input[1:]], [stem + "k"], num_heads=Hkv, interleaved=attr(k_rot, "interleaved")),
            helper.make_node("GroupQueryAttention", [stem + "q", stem + "k", v3, k_scatter.input[0], v_scatter.input[0], "gqa/seqlens", "gqa/total",
                                                     "", "", "", pad.input[0]],
                             [out_reshape.output[0], k_scatter.output[0], v_scatter.output[0]], name=f"{stem}attention", domain="com.microsoft",
                             num_heads=H, kv_num_heads=Hkv, scale=attr(att, "scale")),
        ]
        removed |= {id(n) for n in (att, out_transpose, out_reshape, k_scatter, v_scatter, pad)}
    kept = [n for n in graph.node if id(n) not in removed] + nodes
    outputs = {o.name for o in graph.output}
    while True:  # drop what nothing reads any more (the old rotaries, transposes, reshapes)
        used = {i for n in kept for i in n.input} | outputs
        live = [n for n in kept if any(o in used for o in n.output)]
        if len(live) == len(kept):
            break
        kept = live
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {t.name for t in inits} | {""}
    order = []
    while kept:  # topological order
        later = []
        for n in kept:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                later.append(n)
        if len(later) == len(kept):
            raise SystemExit("the rewritten graph has a cycle")
        kept = later
    del graph.node[:]
    graph.node.extend(order)
    used = {i for n in order for i in n.input}
    keep = [t for t in list(graph.initializer) + inits if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, dst / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    manifest = json.loads((dst / "steerc.json").read_text())
    manifest.pop("checksum", None)
    write_manifest(dst, manifest)
    return {"layers": len(layers), "nodes": len(order)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path, help="an engine compiled with --kv in-place")
    p.add_argument("out", type=Path, help="where the rewritten copy goes (replaced)")
    args = p.parse_args()
    print(json.dumps(rewrite(args.engine, args.out)))


if __name__ == "__main__":
    main()
