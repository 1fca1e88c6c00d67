"""Block min/max weight quantization with an exact float offset, on ONNX Runtime's MatMulNBits.

Each block of ``block_size`` input channels of a constant MatMul weight ``W [K, N]`` is stored as

    W[k, n] = d[b, n] * q[k, n] + m[b, n]        q in 0 .. 2**bits - 1,  b = k // block_size

with ``m`` the block's minimum and ``d = (max - min) / (2**bits - 1)``: llama.cpp's ``Q4_1``
(``Q8_1`` at 8 bits). ONNX Runtime's fast MatMulNBits kernels take only integer zero points
(float zero points fall back to a dequantize path about 20x slower), so the product is split:

    A @ W = MatMulNBits(A, q, d, zero_point=0)  +  blocksum(A) @ m

``blocksum(A) [.., K/block]`` sums ``A`` over each block (one ReduceSum per distinct input,
shared by e.g. q/k/v); ``m [K/block, N]`` is a small fp32 matrix (1/block of the weight). The
offset is thus exact, where an integer zero point rounds it by up to half a step for every
element of the block. Weights that are already on such a grid (a model converted from a Q4_1
GGUF file, dequantized on load) come back bit for bit up to float rounding.

The LM head at ``head_bits`` (8) is quantized symmetrically instead (``d = absmax / 127``, the
kernel's default zero point 128, no correction: llama.cpp's ``Q8_0``, which GGUF files use for the
token table a tied head reads, so it too comes back up to float rounding), one kernel alone.

Inputs ``A`` must have a known rank (shape inference or value_info); ``K`` must be a multiple
of ``block_size``. Matmuls that do not qualify are left in full precision and counted.
"""

from __future__ import annotations

import numpy as np

__all__ = ["minmax_blocks", "quantize_matmuls_minmax", "symmetric_blocks"]


def minmax_blocks(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w [K, N]`` -> ``q [N, K/block, block] uint8``, ``d [N, K/block]``, ``m [N, K/block]``
    with ``w.T`` blockwise equal to ``d * q + m`` up to rounding of ``q``."""
    k, n = w.shape
    if k % block_size:
        raise ValueError(f"K={k} is not a multiple of the block size {block_size}")
    blocks = w.T.reshape(n, k // block_size, block_size).astype(np.float32)  # [N, nb, bs]
    lo, hi = blocks.min(-1), blocks.max(-1)
    levels = (1 << bits) - 1
    d = (hi - lo) / levels
    safe = np.where(d > 0, d, 1.0).astype(np.float32)
    q = np.clip(np.rint((blocks - lo[..., None]) / safe[..., None]), 0, levels).astype(np.uint8)
    return q, d.astype(np.float32), lo.astype(np.float32)


def symmetric_blocks(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``w [K, N]`` -> ``q [N, K/block, block] uint8``, ``d [N, K/block]`` with ``w.T`` blockwise equal to
    ``d * (q - 2**(bits-1))``, ``d = absmax / (2**(bits-1) - 1)``: llama.cpp's ``Q8_0`` at 8 bits, so a
    table stored as Q8_0 (SmolLM2's tied embedding) comes back up to float rounding."""
    k, n = w.shape
    if k % block_size:
        raise ValueError(f"K={k} is not a multiple of the block size {block_size}")
    blocks = w.T.reshape(n, k // block_size, block_size).astype(np.float32)  # [N, nb, bs]
    half = 1 << (bits - 1)
    d = np.abs(blocks).max(-1) / (half - 1)
    safe = np.where(d > 0, d, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / safe[..., None]), 1 - half, half - 1) + half
    return q.astype(np.uint8), d.astype(np.float32)


# Output channels quantized at a time: the float temporaries of one weight stay a slice of it
# (an LM head of 128256 x 2048 would otherwise hold several 1 GiB copies at once).
ROW_CHUNK = 4096


def _quantize_rows(wt: np.ndarray, bits: int, block_size: int, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``wt [N, K]`` (any float dtype, any strides) -> ``q [N, nb, bs]``, ``d``, ``z``, ``r [N, nb]``
    (:func:`minmax_blocks` then :func:`_centre`, or :func:`symmetric_blocks` with a centred zero
    point and no offset) and the largest absolute rebuild error, computed :data:`ROW_CHUNK`
    output channels at a time; each row's result is that of the whole matrix."""
    n, k = wt.shape
    if k % block_size:
        raise ValueError(f"K={k} is not a multiple of the block size {block_size}")
    nb = k // block_size
    q = np.empty((n, nb, block_size), np.uint8)
    d, r = np.empty((n, nb), np.float32), np.empty((n, nb), np.float32)
    z = np.empty((n, nb), np.uint8)
    error = 0.0
    for start in range(0, n, ROW_CHUNK):
        rows = np.ascontiguousarray(wt[start:start + ROW_CHUNK], dtype=np.float32)  # [c, K]
        end = start + rows.shape[0]
        if symmetric:
            qc, dc = symmetric_blocks(rows.T, bits, block_size)
            zc, rc = np.full(dc.shape, 1 << (bits - 1), np.uint8), np.zeros_like(dc)
        else:
            qc, dc, mc = minmax_blocks(rows.T, bits, block_size)
            zc, rc = _centre(dc, mc, bits)
        rebuilt = dc[..., None] * (qc.astype(np.float32) - zc[..., None]) + rc[..., None]  # [c, nb, bs]
        error = max(error, float(np.abs(rebuilt - rows.reshape(-1, nb, block_size)).max()))
        q[start:end], d[start:end], z[start:end], r[start:end] = qc, dc, zc, rc
    return q, d, z, r, error


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """``q [N, nb, bs]`` -> MatMulNBits' ``B [N, nb, bs * bits / 8]`` (low nibble first)."""
    if bits == 8:
        return q
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _centre(d: np.ndarray, m: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer zero points ``z [N, nb]`` nearest ``-m / d`` and the exact residual offsets
    ``r = m + z * d``: ``d * q + m == d * (q - z) + r``. The kernel's integer part then holds
    weights centred on zero (its int8 activations' rounding error does not add up over a block)
    and only the residual, at most half a step, goes through the float correction."""
    levels = (1 << bits) - 1
    safe = np.where(d > 0, d, 1.0)
    z = np.clip(np.rint(-m / safe), 0, levels).astype(np.uint8)
    return z, (m + z.astype(np.float32) * d).astype(np.float32)


def _pack_zero_points(z: np.ndarray, bits: int) -> np.ndarray:
    """``z [N, nb]`` -> MatMulNBits' packed zero points ``[N * ceil(nb * bits / 8)]``."""
    if bits == 8:
        return z.reshape(-1)
    if z.shape[1] % 2:
        z = np.pad(z, ((0, 0), (0, 1)))
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def _rank(graph, name: str) -> int | None:
    for value in (*graph.value_info, *graph.input, *graph.output):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _constant_weight(node, inits, producers) -> tuple[str, bool] | None:
    """``(initializer, transposed)`` that a MatMul's right operand is: the initializer itself,
    or a 2-D Transpose of one (a tied LM head reads the embedding table ``[V, K]`` that way)."""
    b = node.input[1]
    if b in inits:
        return b, False
    t = producers.get(b)
    if t is not None and t.op_type == "Transpose" and t.input[0] in inits and len(inits[t.input[0]].dims) == 2:
        perm = [list(a.ints) for a in t.attribute if a.name == "perm"]
        if perm in ([[1, 0]], []):
            return t.input[0], True
    return None


def _eligible(graph, node, tensor, block_size: int) -> str | None:
    """Why ``node`` (a MatMul with the constant weight ``tensor``) cannot be rewritten, or None."""
    if tensor.data_type not in (1, 10) or len(tensor.dims) != 2:  # float, float16
        return f"weight {list(tensor.dims)} is not a 2-D float32 or float16 matrix"
    k = tensor.dims[1] if node.input[1] != tensor.name else tensor.dims[0]
    if k % block_size:
        return f"K={k} is not a multiple of the block size {block_size}"
    rank = _rank(graph, node.input[0])
    if rank is None or rank < 2:
        return "the input's rank is unknown"
    return None


def quantize_matmuls_minmax(model, bits: int, block_size: int, accuracy_level: int = 4, head_bits: int | None = None) -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto`` with its weights loaded) in place.

    MatMuls that read the same input with weights of the same ``K`` (q/k/v, gate/up) become
    one MatMulNBits over the concatenated weights, one offset MatMul and one Split: fewer,
    larger kernel calls for a decode step. ``head_bits``: bits of the MatMul that writes the
    ``logits`` output (the LM head; llama.cpp's Q4 files keep it at 8 bits too), quantized symmetrically
    (:func:`symmetric_blocks`, no offset correction). Returns ``matmuls`` (rewritten), ``kernels``
    (MatMulNBits nodes), ``skipped`` (name -> why), ``max_error`` (largest absolute
    difference between a rebuilt weight and the original) and, with a head at ``head_bits``,
    ``head_bits`` and ``head_max_error``."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    groups: dict[tuple[str, int, int], list] = {}
    weight: dict[int, tuple[str, bool]] = {}  # id(MatMul) -> (initializer, transposed)
    skipped = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1].endswith(".nbits.offset"):
            continue  # not a MatMul, or an offset correction of an earlier run
        found = _constant_weight(node, inits, producers)
        if found is None:
            continue
        why = _eligible(graph, node, inits[found[0]], block_size)
        if why:
            skipped[node.name or found[0]] = why
            continue
        weight[id(node)] = found
        tensor = inits[found[0]]
        k = int(tensor.dims[1] if found[1] else tensor.dims[0])
        node_bits = head_bits if head_bits and node.output[0] == "logits" and "logits" in outputs else bits
        groups.setdefault((node.input[0], k, node_bits), []).append(node)
    dropped = set()  # Transposes whose only reader was a rewritten MatMul
    first = {id(members[0]): key for key, members in groups.items()}
    grouped = {id(n) for members in groups.values() for n in members}
    new_nodes, new_inits, errors = [], [], {}  # bits -> largest rebuild error
    for node in graph.node:
        if id(node) not in grouped:
            new_nodes.append(node)
            continue
        if id(node) not in first:
            continue  # emitted with its group
        (a, k, group_bits), members = first[id(node)], groups[first[id(node)]]
        nb = k // block_size
        symmetric = group_bits != bits  # the head: symmetric, no offset correction
        parts = []
        for member in members:
            name, transposed = weight[id(member)]
            w = numpy_helper.to_array(inits[name])  # stored [N, K] when transposed, else [K, N]
            q, d, z, r, error = _quantize_rows(w if transposed else w.T, group_bits, block_size, symmetric)
            del w
            errors[group_bits] = max(errors.get(group_bits, 0.0), error)
            parts.append((q, d, z, r))
            consumers[member.input[1]] -= 1
            if transposed and consumers[member.input[1]] == 0:
                dropped.add(id(producers[member.input[1]]))
                consumers[name] -= 1
        n = sum(p[0].shape[0] for p in parts)
        dtype = np.float16 if inits[weight[id(members[0])][0]].data_type == 10 else np.float32  # scales and offsets in the activations' dtype
        stem = f"{members[0].name or weight[id(members[0])][0]}.nbits"
        rank = _rank(graph, a)
        new_inits += [
            numpy_helper.from_array(np.concatenate([_pack(p[0], group_bits) for p in parts]), f"{stem}.q"),  # [N, nb, blob]
            numpy_helper.from_array(np.concatenate([p[1].reshape(-1) for p in parts]).astype(dtype), f"{stem}.scale"),  # [N * nb]
        ]
        fused = f"{stem}.out" if len(members) > 1 else members[0].output[0]
        if symmetric:  # MatMulNBits' default zero point, 2**(bits-1): the kernel alone
            new_nodes.append(helper.make_node("MatMulNBits", [a, f"{stem}.q", f"{stem}.scale"], [fused], name=f"{stem}", domain="com.microsoft",
                                              K=k, N=n, bits=group_bits, block_size=block_size, accuracy_level=accuracy_level))
        else:
            new_inits += _offset_inits(stem, parts, group_bits, dtype, rank, nb, block_size)
            new_nodes += _offset_nodes(stem, a, fused, k, n, group_bits, block_size, accuracy_level)
        if len(members) > 1:
            sizes = f"{stem}.split"
            new_inits.append(numpy_helper.from_array(np.array([p[0].shape[0] for p in parts], np.int64), sizes))
            new_nodes.append(helper.make_node("Split", [fused, sizes], [m.output[0] for m in members], name=f"{stem}.split", axis=-1))
    del graph.node[:]
    graph.node.extend(n for n in new_nodes if id(n) not in dropped)
    keep = [t for t in graph.initializer if consumers.get(t.name, 0) > 0]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    head = {key[2] for key in groups} - {bits}
    report = {"matmuls": len(grouped), "kernels": len(groups), "skipped": skipped, "max_error": errors.get(bits, 0.0)}
    if head:
        report.update(head_bits=head_bits, head_max_error=errors[head_bits])
    return report


def _offset_inits(stem: str, parts: list, bits: int, dtype, rank: int, nb: int, block_size: int) -> list:
    """The zero points, the offsets ``r [nb, N]`` and the block Reshape/ReduceSum constants of one minmax kernel."""
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(np.concatenate([_pack_zero_points(p[2], bits) for p in parts]), f"{stem}.zero"),
        numpy_helper.from_array(np.concatenate([p[3].T for p in parts], axis=1).astype(dtype), f"{stem}.offset"),  # [nb, N]
        numpy_helper.from_array(np.array([0] * (rank - 1) + [nb, block_size], np.int64), f"{stem}.blocks.shape"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{stem}.blocks.axis"),
    ]


def _offset_nodes(stem: str, a: str, out: str, k: int, n: int, bits: int, block_size: int, accuracy_level: int) -> list:
    """MatMulNBits with integer zero points plus ``blocksum(a) @ r``: ``out = a @ W`` with each block's minimum exact."""
    from onnx import helper

    return [
        helper.make_node("MatMulNBits", [a, f"{stem}.q", f"{stem}.scale", f"{stem}.zero"], [f"{stem}.int"], name=f"{stem}",
                         domain="com.microsoft", K=k, N=n, bits=bits, block_size=block_size, accuracy_level=accuracy_level),
        helper.make_node("Reshape", [a, f"{stem}.blocks.shape"], [f"{stem}.blocks"], name=f"{stem}.blocks"),  # [.., nb, block]
        helper.make_node("ReduceSum", [f"{stem}.blocks", f"{stem}.blocks.axis"], [f"{stem}.blocksum"], name=f"{stem}.blocksum", keepdims=0),
        helper.make_node("MatMul", [f"{stem}.blocksum", f"{stem}.offset"], [f"{stem}.correction"], name=f"{stem}.correction"),  # [.., N]
        helper.make_node("Add", [f"{stem}.int", f"{stem}.correction"], [out], name=f"{stem}.add"),
    ]
