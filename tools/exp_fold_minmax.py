"""Experiment (issue 26, measured and not adopted): fold each int4 kernel's minmax offset
correction into the kernel itself, by widening its input.

A minmax MatMulNBits kernel (``steerc/passes/onnx/nbits_minmax.py``) computes ``a @ W`` as the
kernel with integer zero points plus ``blocksum(a) @ R`` (Reshape, ReduceSum, MatMul, Add: 4
nodes). Here the block sums become extra input features instead: ``a' = concat(a, a @ B)``
(``B [K, P]`` the 0/1 block indicator, zero-padded to whole blocks) and the offsets ``R`` extra
4-bit weight rows, in ``--digits`` base-16 digits (the second digit's input scaled by 1/16), so
one MatMulNBits of ``K + digits * P`` does both: 3 nodes per kernel instead of 5.

    PYTHONPATH=. python tools/exp_fold_minmax.py engines/smollm2-int4 /tmp/int4-fold2 [--digits 2]
    PYTHONPATH=. python tools/bench_decode.py engines/smollm2-int4 --contexts 512 2016 --batches 1 \\
        --variants steerc llama.cpp --compare fold2=/tmp/int4-fold2 --threads 2

Writes a copy of the engine folder with the rewritten step graph (manifest re-hashed) and prints
the largest error left in the offsets.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

BLOCK = 32


def _attr(node, name):
    from onnx import helper

    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _unpack4(b: np.ndarray) -> np.ndarray:  # [N, nb, 16] -> [N, nb, 32]
    out = np.empty(b.shape[:-1] + (2 * b.shape[-1],), np.uint8)
    out[..., 0::2], out[..., 1::2] = b & 15, b >> 4
    return out


def _pack4(q: np.ndarray) -> np.ndarray:
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpack_zero(zp: np.ndarray, n: int, nb: int) -> np.ndarray:
    zp = zp.reshape(n, -1)
    z = np.empty((n, 2 * zp.shape[1]), np.uint8)
    z[:, 0::2], z[:, 1::2] = zp & 15, zp >> 4
    return z[:, :nb]


def _pack_zero(z: np.ndarray) -> np.ndarray:
    if z.shape[1] % 2:
        z = np.pad(z, ((0, 0), (0, 1)))
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def _minmax4(v: np.ndarray):  # v [N, 32] -> q, d [N], z [N]
    lo, hi = np.minimum(v.min(1), 0), np.maximum(v.max(1), 0)
    d = (hi - lo) / 15
    safe = np.where(d > 0, d, 1)
    z = np.clip(np.rint(-lo / safe), 0, 15)
    return np.clip(np.rint(v / safe[:, None] + z[:, None]), 0, 15).astype(np.uint8), d.astype(np.float32), z.astype(np.uint8)


def fold(src: Path, dst: Path, digits: int) -> dict:
    import onnx
    from onnx import helper, numpy_helper

    from steerc.engine_format import write_manifest

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
    model = onnx.load(src / "model.onnx")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    removed, replaced, new_inits, worst = set(), {}, [], 0.0
    for n in graph.node:
        if n.op_type != "MatMulNBits" or len(n.input) < 4:
            continue  # symmetric kernels (the 8-bit head) carry no correction
        stem = n.name
        add = next(r for r in readers[n.output[0]] if r.op_type == "Add")
        correction = producer[add.input[1]]
        blocksum = producer[correction.input[0]]
        reshape = producer[blocksum.input[0]]
        K, N = _attr(n, "K"), _attr(n, "N")
        nb, a = K // BLOCK, n.input[0]
        P = BLOCK * -(-nb // BLOCK)
        q = _unpack4(numpy_helper.to_array(inits[n.input[1]]))
        scales = numpy_helper.to_array(inits[n.input[2]]).reshape(N, nb)
        zeros = _unpack_zero(numpy_helper.to_array(inits[n.input[3]]), N, nb)
        rest = np.zeros((N, P), np.float32)
        rest[:, :nb] = numpy_helper.to_array(inits[correction.input[1]]).T  # the offsets R [N, nb]
        qs, ds, zs, indicators, scale = [q], [scales], [zeros], [], 1.0
        for _ in range(digits):
            qd, dd, zd = np.empty((N, P), np.uint8), np.empty((N, P // BLOCK), np.float32), np.empty((N, P // BLOCK), np.uint8)
            for b in range(P // BLOCK):
                qd[:, b * BLOCK:(b + 1) * BLOCK], dd[:, b], zd[:, b] = _minmax4(rest[:, b * BLOCK:(b + 1) * BLOCK] * scale)
            rebuilt = ((qd.reshape(N, -1, BLOCK).astype(np.float32) - zd[..., None]) * dd[..., None]).reshape(N, P)
            rest = rest - rebuilt / scale
            qs.append(qd.reshape(N, -1, BLOCK)), ds.append(dd), zs.append(zd)
            ind = np.zeros((K, P), np.float32)
            for b in range(nb):
                ind[b * BLOCK:(b + 1) * BLOCK, b] = 1.0 / scale
            indicators.append(ind)
            scale *= 16
        worst = max(worst, float(np.abs(rest).max()))
        new_inits += [numpy_helper.from_array(_pack4(np.concatenate(qs, 1)), f"{stem}.fold.q"),
                      numpy_helper.from_array(np.concatenate(ds, 1).reshape(-1), f"{stem}.fold.scale"),
                      numpy_helper.from_array(_pack_zero(np.concatenate(zs, 1)), f"{stem}.fold.zero"),
                      numpy_helper.from_array(np.concatenate(indicators, 1), f"{stem}.fold.blocks")]
        replaced[id(n)] = [
            helper.make_node("MatMul", [a, f"{stem}.fold.blocks"], [f"{stem}.fold.sums"], name=f"{stem}.fold.sums"),
            helper.make_node("Concat", [a, f"{stem}.fold.sums"], [f"{stem}.fold.in"], name=f"{stem}.fold.in", axis=-1),
            helper.make_node("MatMulNBits", [f"{stem}.fold.in", f"{stem}.fold.q", f"{stem}.fold.scale", f"{stem}.fold.zero"], [add.output[0]], name=stem,
                             domain="com.microsoft", K=K + digits * P, N=N, bits=4, block_size=BLOCK, accuracy_level=_attr(n, "accuracy_level")),
        ]
        removed |= {id(x) for x in (n, add, correction, blocksum, reshape)}
    nodes = []
    for n in graph.node:
        if id(n) in replaced:
            nodes += replaced[id(n)]
        elif id(n) not in removed:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    onnx.save(model, dst / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    manifest = json.loads((dst / "steerc.json").read_text())
    manifest.pop("checksum", None)
    write_manifest(dst, manifest)
    return {"kernels": len(replaced), "nodes": len(nodes), "max_offset_error": worst}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path, help="an int4 engine folder (steerc compile --weights int4)")
    p.add_argument("out", type=Path, help="where the folded copy goes (replaced)")
    p.add_argument("--digits", type=int, default=2, choices=(1, 2, 3), help="base-16 digits of the offsets (default 2)")
    args = p.parse_args()
    print(json.dumps(fold(args.engine, args.out, args.digits)))


if __name__ == "__main__":
    main()
