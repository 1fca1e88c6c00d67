"""ONNX pass ``quantize_embedding`` (``--weights int8|int4``, minmax): the token table read by
``com.microsoft::GatherBlockQuantized`` at 8 bits instead of an fp32 ``Gather``.

After ``quantize_weights`` the LM head is an 8-bit symmetric MatMulNBits; a tied head read the
embedding table, which was left in full precision for the token lookup alone (113 MB of
SmolLM2-135M's 220 MB weight file). This pass replaces each ``Gather(table, ids)`` whose table is
a 2-D float initializer ``[V, K]`` read by nothing else with

    GatherBlockQuantized(q [V, K/block, block] uint8, ids, d [V, K/block, 1])  ->  Reshape [.., K]

quantized like the head (:func:`~steerc.passes.onnx.nbits_minmax.symmetric_blocks`: ``d =
absmax / 127``, the op's default zero point 128), so a GGUF's Q8_0 table comes back up to float
rounding. Where a MatMulNBits head holds exactly those bytes (the tied head), the lookup reads
its initializer: one copy of the table on disk and in memory. A decode step looks up one row, so
this buys memory, not speed. Raises when the graph has no such Gather.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass, save_with_weights

__all__ = ["EMBEDDING_BITS", "quantize_embedding", "quantize_embedding_model"]

log = logging.getLogger(__name__)

EMBEDDING_BITS = 8


def _head_bytes(graph, inits: dict, v: int, k: int, block_size: int) -> dict[bytes, str]:
    """Digest of the packed weights -> initializer name, for each symmetric 8-bit MatMulNBits of shape N=v, K=k."""
    import hashlib

    found = {}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) > 3 and node.input[3]:
            continue  # not the kernel, or one with zero points (the minmax scheme)
        attrs = {a.name: a.i for a in node.attribute}
        if (attrs.get("N"), attrs.get("K"), attrs.get("bits"), attrs.get("block_size")) == (v, k, EMBEDDING_BITS, block_size) and node.input[1] in inits:
            from onnx import numpy_helper

            found[hashlib.sha256(numpy_helper.to_array(inits[node.input[1]]).tobytes()).digest()] = node.input[1]
    return found


def quantize_embedding_model(model, block_size: int) -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto`` with its weights loaded) in place; returns
    ``tables`` (Gathers rewritten), ``shared`` (of those, reading a head's initializer) and
    ``max_error`` (largest absolute difference between a rebuilt row and the original)."""
    import hashlib

    from onnx import helper, numpy_helper

    from steerc.passes.onnx.nbits_minmax import symmetric_blocks

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    new_nodes, new_inits, gone = [], [], set()
    tables = shared = 0
    error = 0.0
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.domain in ("", "ai.onnx") else None
        axis = [a.i for a in node.attribute if a.name == "axis"]
        if (table is None or table.data_type not in (1, 10) or len(table.dims) != 2 or axis not in ([], [0]) or readers[table.name] != 1
                or table.dims[1] % block_size):
            new_nodes.append(node)
            continue
        v, k = (int(x) for x in table.dims)
        w = numpy_helper.to_array(table).astype(np.float32)  # [V, K]
        q, d = symmetric_blocks(w.T, EMBEDDING_BITS, block_size)  # [V, nb, block], [V, nb]
        error = max(error, float(np.abs(d[..., None] * (q.astype(np.float32) - 128) - w.reshape(v, k // block_size, block_size)).max()))
        stem = f"{table.name}.gbq"
        data = _head_bytes(graph, inits, v, k, block_size).get(hashlib.sha256(q.tobytes()).digest())
        if data is None:
            data = f"{stem}.q"
            new_inits.append(numpy_helper.from_array(q, data))
        else:
            shared += 1
        dtype = np.float16 if table.data_type == 10 else np.float32
        new_inits += [numpy_helper.from_array(d[..., None].astype(dtype), f"{stem}.scale"),  # [V, nb, 1]
                      numpy_helper.from_array(np.array([0] * _index_rank(graph, node.input[1]) + [k], np.int64), f"{stem}.shape")]
        new_nodes += [
            helper.make_node("GatherBlockQuantized", [data, node.input[1], f"{stem}.scale"], [f"{stem}.blocks"], name=stem, domain="com.microsoft",
                             bits=EMBEDDING_BITS, block_size=block_size, gather_axis=0, quantize_axis=2),  # [.., nb, block]
            helper.make_node("Reshape", [f"{stem}.blocks", f"{stem}.shape"], [node.output[0]], name=f"{stem}.reshape"),  # [.., K]
        ]
        gone.add(table.name)
        tables += 1
    if not tables:
        raise RuntimeError("no Gather on a 2-D float table read by nothing else (the LM head not quantized, or already rewritten)")
    del graph.node[:]
    graph.node.extend(new_nodes)
    keep = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return {"tables": tables, "shared": shared, "bits": EMBEDDING_BITS, "block_size": block_size, "max_error": error}


def _index_rank(graph, name: str) -> int:
    """Rank of the Gather's indices (a graph input, or a value with a known shape); 2 ([B, S]) when unknown."""
    for value in (*graph.input, *graph.value_info):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return 2


def quantize_embedding_file(path: Path, block_size: int) -> dict:
    """:func:`quantize_embedding_model` on ``path`` and its external data file, rewritten in place."""
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    before = data.stat().st_size if data.is_file() else 0
    model = onnx.load(str(path))
    report = quantize_embedding_model(model, block_size)
    after = save_with_weights(model, path, "embed")
    log.info("%s: token table to GatherBlockQuantized (%d-bit, block %d%s): %.1f -> %.1f MiB", path.name, EMBEDDING_BITS, block_size,
             ", sharing the head's bytes" if report["shared"] else "", before / 2**20, after / 2**20)
    return {**report, "op": "com.microsoft::GatherBlockQuantized", "data_bytes_before": before, "data_bytes_after": after}


@onnx_pass(wanted=lambda settings: settings.weights in ("int8", "int4") and settings.resolved_weight_method == "minmax")
def quantize_embedding(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`quantize_embedding_file` with the settings' block; the entry is the manifest's ``weights.embedding``."""
    return OnnxPassReport("quantize_embedding", quantize_embedding_file(graph.path, settings.weight_block))
