"""The token table to GatherBlockQuantized: a tied head's bytes are shared, a Q8_0 table comes back
up to float rounding, the lookup equals the rebuilt rows, and a graph with no such Gather raises."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from steerc.passes.onnx.nbits_minmax import quantize_matmuls_minmax, symmetric_blocks
from steerc.passes.onnx.quantize_embedding import quantize_embedding_file, quantize_embedding_model

K, V, BLOCK = 64, 48, 32


def tied(table: np.ndarray, untied_head: bool = False) -> onnx.ModelProto:
    """``x = table[ids]``, ``logits = x @ table.T`` (or a head of its own), ``x`` an output too."""
    head = table[::-1].copy() if untied_head else None
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
             helper.make_node("Transpose", ["head" if untied_head else "table"], ["table_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "table_t"], ["logits"], name="head")]
    inits = [numpy_helper.from_array(table, "table")] + ([numpy_helper.from_array(head, "head")] if untied_head else [])
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", V]),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def run(model: onnx.ModelProto, ids: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})


def q8_0_table(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (V, K // BLOCK, BLOCK)).astype(np.float32)
    q[..., 3] = 127  # llama.cpp's d = absmax / 127
    d = rng.uniform(1e-3, 5e-3, (V, K // BLOCK, 1)).astype(np.float16).astype(np.float32)
    return (d * q).reshape(V, K)


def rebuilt(table: np.ndarray) -> np.ndarray:
    q, d = symmetric_blocks(table.T, 8, BLOCK)
    return (d[..., None] * (q.astype(np.float32) - 128)).reshape(V, K)


def test_tied_table_shares_the_heads_bytes():
    table = np.random.default_rng(0).standard_normal((V, K)).astype(np.float32)
    model = tied(table)
    quantize_matmuls_minmax(model, 4, BLOCK, accuracy_level=0, head_bits=8)
    report = quantize_embedding_model(model, BLOCK)
    assert report["tables"] == 1 and report["shared"] == 1 and 0 < report["max_error"] <= np.abs(table).max() / 254 + 1e-6
    nodes = {n.op_type: n for n in model.graph.node}
    assert sorted(nodes) == ["GatherBlockQuantized", "MatMulNBits", "Reshape"]
    assert nodes["GatherBlockQuantized"].input[0] == nodes["MatMulNBits"].input[1]  # one copy of the table
    assert not [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] == V]
    ids = np.array([[1, 5, 47], [0, 0, 2]])
    logits, x = run(model, ids)
    np.testing.assert_array_equal(x, rebuilt(table)[ids])
    np.testing.assert_allclose(logits, x @ rebuilt(table).T, atol=1e-4)


def test_q8_0_table_is_looked_up_up_to_float_rounding():
    table = q8_0_table()
    model = tied(table, untied_head=True)
    quantize_matmuls_minmax(model, 4, BLOCK, accuracy_level=0, head_bits=8)
    report = quantize_embedding_model(model, BLOCK)
    assert report["tables"] == 1 and report["shared"] == 0  # the head is another matrix: the table gets bytes of its own
    ids = np.array([[3, 9, 40]])
    _, x = run(model, ids)
    np.testing.assert_allclose(x, table[ids], rtol=1e-6, atol=0)


def test_a_table_still_read_in_full_precision_is_left(tmp_path):
    """Head not quantized (the Transpose still reads the table): nothing to rewrite, the pass raises."""
    path = tmp_path / "m.onnx"
    onnx.save_model(tied(q8_0_table()), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    with pytest.raises(RuntimeError, match="no Gather"):
        quantize_embedding_file(path, BLOCK)


def test_second_run_finds_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    model = tied(q8_0_table())
    quantize_matmuls_minmax(model, 4, BLOCK, head_bits=8)
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    entry = quantize_embedding_file(path, BLOCK)
    assert entry["tables"] == 1 and entry["data_bytes_after"] < entry["data_bytes_before"]
    with pytest.raises(RuntimeError, match="no Gather"):
        quantize_embedding_file(path, BLOCK)
