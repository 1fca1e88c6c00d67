"""Block min/max MatMulNBits with an exact float offset: weights on a Q4_1 grid come back
exactly, matmuls sharing an input are fused, what cannot be rewritten is left and said, and a
second run finds nothing."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from steerc.passes.onnx.nbits_minmax import minmax_blocks, quantize_matmuls_minmax, symmetric_blocks
from steerc.passes.onnx.quantize_weights import quantize_file

K, BLOCK = 64, 32


def q4_1_grid(k: int, n: int, seed: int = 0) -> np.ndarray:
    """Weights as a Q4_1 GGUF file dequantizes them: per block of 32 inputs, ``d * q + m``."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (n, k // BLOCK, BLOCK)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's rounding puts the block's min and max on 0 and 15
    d = rng.uniform(0.01, 0.05, (n, k // BLOCK, 1)).astype(np.float16).astype(np.float32)
    m = (-7.3 * d + rng.normal(0, 0.01, d.shape)).astype(np.float16).astype(np.float32)
    return (d * q + m).reshape(n, k).T.copy()  # [K, N]


def graph(weights: dict[str, np.ndarray], feeds: dict[str, str], dtype=np.float32) -> onnx.ModelProto:
    """``y_name = feeds[name] @ weights[name]`` for each weight; inputs ``[B, S, K]``."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("MatMul", [feeds[name], name], [f"y_{name}"], name=f"mm_{name}") for name in weights]
    inputs = [helper.make_tensor_value_info(x, elem, ["B", "S", w.shape[0]]) for x, w in {feeds[n]: weights[n] for n in weights}.items()]
    outputs = [helper.make_tensor_value_info(f"y_{n}", elem, ["B", "S", w.shape[1]]) for n, w in weights.items()]
    inits = [numpy_helper.from_array(w.astype(dtype), n) for n, w in weights.items()]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 21)])


def run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_q4_1_weights_are_rebuilt_exactly():
    w = q4_1_grid(K, 24)
    q, d, m = minmax_blocks(w, 4, BLOCK)
    assert q.dtype == np.uint8 and q.max() == 15 and q.min() == 0
    np.testing.assert_array_equal((d[..., None] * q + m[..., None]).reshape(24, K).T, w)


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_rewrite_equals_the_matmuls(bits):
    weights = {"wq": q4_1_grid(K, 32, 1), "wk": q4_1_grid(K, 16, 2), "wv": q4_1_grid(K, 16, 3), "wo": q4_1_grid(2 * K, 32, 4)}
    feeds = {"wq": "x", "wk": "x", "wv": "x", "wo": "h"}
    model = graph(weights, feeds)
    rng = np.random.default_rng(5)
    feed = {"x": rng.standard_normal((2, 3, K)).astype(np.float32), "h": rng.standard_normal((2, 3, 2 * K)).astype(np.float32)}
    expected = run(model, feed)
    report = quantize_matmuls_minmax(model, bits, BLOCK, accuracy_level=0)  # fp32 activations: only the weights differ
    assert report["matmuls"] == 4 and report["kernels"] == 2 and report["skipped"] == {}
    assert report["max_error"] <= 1e-6  # the grid is found again
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 2 and ops.count("Split") == 1
    assert not {"wq", "wk", "wv", "wo"} & {t.name for t in model.graph.initializer}  # full-precision weights gone
    for got, want in zip(run(model, feed), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def q8_0_grid(k: int, n: int, seed: int = 0) -> np.ndarray:
    """Weights as a Q8_0 GGUF table dequantizes: per block of 32, ``d * q``, ``|q| <= 127`` with 127 reached."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (n, k // BLOCK, BLOCK)).astype(np.float32)
    q[..., 0] = np.where(rng.random(q.shape[:2]) < 0.5, 127, -127)  # llama.cpp's d = absmax / 127
    d = rng.uniform(1e-3, 5e-3, (n, k // BLOCK, 1)).astype(np.float16).astype(np.float32)
    return (d * q).reshape(n, k).T.copy()  # [K, N]


def test_q8_0_weights_are_rebuilt_by_the_symmetric_scheme():
    w = q8_0_grid(K, 24)
    q, d = symmetric_blocks(w, 8, BLOCK)
    assert q.dtype == np.uint8 and q.min() >= 1 and q.max() == 255
    rebuilt = (d[..., None] * (q.astype(np.float32) - 128)).reshape(24, K).T
    np.testing.assert_allclose(rebuilt, w, rtol=1e-6, atol=0)  # up to float rounding of d


def test_offgrid_weights_keep_the_block_minimum():
    """Any weights: the rebuilt block spans min..max and the minimum itself is exact."""
    w = np.random.default_rng(0).standard_normal((K, 8)).astype(np.float32)
    q, d, m = minmax_blocks(w, 4, BLOCK)
    rebuilt = (d[..., None] * q + m[..., None]).reshape(8, K).T
    blocks = w.T.reshape(8, K // BLOCK, BLOCK)
    np.testing.assert_array_equal(m, blocks.min(-1))
    assert np.abs(rebuilt - w).max() <= d.max() / 2 + 1e-6


def test_int8_activations_stay_close():
    weights = {"w": q4_1_grid(K, 32)}
    model = graph(weights, {"w": "x"})
    x = np.random.default_rng(1).standard_normal((1, 5, K)).astype(np.float32)
    (expected,) = run(model, {"x": x})
    quantize_matmuls_minmax(model, 4, BLOCK, accuracy_level=4)
    (got,) = run(model, {"x": x})
    assert 0 < np.abs(got - expected).max() <= 2e-2 * np.abs(expected).max()


def test_fp16_weights_keep_fp16_scales():
    weights = {"w": q4_1_grid(K, 16)}
    model = graph(weights, {"w": "x"}, dtype=np.float16)
    quantize_matmuls_minmax(model, 4, BLOCK)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["mm_w.nbits.scale"].data_type == TensorProto.FLOAT16 and inits["mm_w.nbits.offset"].data_type == TensorProto.FLOAT16


def test_what_cannot_be_rewritten_is_left_and_said():
    weights = {"ok": q4_1_grid(K, 8), "odd": np.ones((48, 8), np.float32)}  # K=48 is not a multiple of 32
    model = graph(weights, {"ok": "x", "odd": "y"})
    report = quantize_matmuls_minmax(model, 4, BLOCK)
    assert report["matmuls"] == 1 and "K=48" in report["skipped"]["mm_odd"]
    assert [n.op_type for n in model.graph.node].count("MatMul") == 2  # mm_odd and the offset correction


def test_second_run_finds_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(graph({"w": q4_1_grid(K, 32)}, {"w": "x"}), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    entry = quantize_file(path, "int4", BLOCK, method="minmax")
    assert entry["method"] == "minmax" and entry["matmuls"] == 1 and entry["max_error"] <= 1e-6
    with pytest.raises(RuntimeError, match="no MatMul with a constant weight"):
        quantize_file(path, "int4", BLOCK, method="minmax")  # the offset MatMul is ours, not a weight


def test_tied_head_is_quantized_at_head_bits():
    """A tied LM head reads the embedding table [V, K] through a Transpose: quantized at 8 bits,
    symmetric (one MatMulNBits, no offset correction), the Transpose dropped, the table kept for
    the token lookup."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((48, K)).astype(np.float32)  # [V, K]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"]),
             helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "table_t"], ["logits"], name="head")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", 48])], [numpy_helper.from_array(table, "table")],
                          value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    feed = {"ids": np.array([[1, 5, 47]])}
    (expected,) = run(model, feed)
    report = quantize_matmuls_minmax(model, 4, BLOCK, accuracy_level=0, head_bits=8)
    assert report["matmuls"] == 1 and report["head_bits"] == 8 and 0 < report["head_max_error"] < report_4bit_error(table)
    ops = [n.op_type for n in model.graph.node]
    assert "Transpose" not in ops and "Gather" in ops and "table" in {t.name for t in model.graph.initializer}
    assert [a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"] == [8]
    assert sorted(ops) == ["Gather", "MatMulNBits"]  # no zero points, no Reshape/ReduceSum/MatMul/Add correction
    (got,) = run(model, feed)
    q, d = symmetric_blocks(table.T, 8, BLOCK)  # the 8-bit weights the kernel holds
    rebuilt = (d[..., None] * (q.astype(np.float32) - 128)).reshape(table.shape)  # [V, K]
    np.testing.assert_allclose(got, table[feed["ids"]] @ rebuilt.T, atol=1e-4)
    assert np.abs(got - expected).max() > 0  # quantized, not the full-precision head


def report_4bit_error(table: np.ndarray) -> float:
    q, d, m = minmax_blocks(table.T, 4, BLOCK)
    return float(np.abs((d[..., None] * q + m[..., None]).reshape(table.shape) - table).max())


@pytest.mark.parametrize("transposed", [False, True])
def test_chunked_rows_equal_the_whole_matrix(monkeypatch, transposed):
    from steerc.passes.onnx import nbits_minmax

    w = np.random.default_rng(3).standard_normal((64, 40)).astype(np.float32)  # [K, N]
    wt = np.ascontiguousarray(w.T) if transposed else w.T  # [N, K], contiguous or a strided view
    q, d, m = minmax_blocks(w, 4, 32)
    z, r = nbits_minmax._centre(d, m, 4)
    monkeypatch.setattr(nbits_minmax, "ROW_CHUNK", 16)  # 40 rows: chunks of 16, 16, 8
    qc, dc, zc, rc, error = nbits_minmax._quantize_rows(wt, 4, 32)
    assert np.array_equal(qc, q) and np.array_equal(dc, d) and np.array_equal(zc, z) and np.array_equal(rc, r)
    rebuilt = d[..., None] * (q.astype(np.float32) - z[..., None]) + r[..., None]
    assert error == float(np.abs(rebuilt - w.T.reshape(40, 2, 32)).max()) and 0 < error < 0.2
