"""``kv_in_place``: the ONNX rewrite of a concat step graph into one that writes into KV buffers."""

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from steerc.passes.onnx.kv_in_place import CAPACITY_DIM, rewrite_kv_in_place
from steerc.errors import EngineError


def _ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_rewrites_the_tiny_engine(tiny_engine):
    model = onnx.load(str(tiny_engine / "model.onnx"), load_external_data=False)
    before = _ops(model)
    report = rewrite_kv_in_place(model)
    after = _ops(model)
    assert report == {"layout": "in-place", "buffers": 4, "attention_sites": 2, "opset": 24}
    assert after["TensorScatter"] == 4 and after["Pad"] == 2 and after["Attention"] == before["Attention"]
    assert model.opset_import[0].version == 24
    for node in model.graph.node:
        if node.op_type == "Attention":
            assert node.input[3].endswith("/padded")
        for name in node.input:
            if name.startswith("past_key_values."):
                # the exported Concat and Shape no longer read them; the rewrite reads the capacity C
                assert node.op_type == "TensorScatter" or list(node.output) == ["kv_in_place/capacity"]
    for value in (*model.graph.input, *model.graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            assert value.type.tensor_type.shape.dim[2].dim_param == CAPACITY_DIM
    with pytest.raises(EngineError, match="read by a TensorScatter"):
        rewrite_kv_in_place(model)  # not twice


def _synthetic(opset=23, causal=False, extra_reader=False):
    """One layer: ``present.0.* = Concat(past, new)`` and Attention over them (``q`` and the new K/V are inputs)."""
    B, H, D = 1, 2, 4
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [B, "S"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [B, "T"]),
              helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [B, H, "P", D]),
              helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, [B, H, "P", D]),
              helper.make_tensor_value_info("q", TensorProto.FLOAT, [B, H, "S", D]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [B, H, "S", D]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [B, H, "S", D]),
              helper.make_tensor_value_info("m", TensorProto.FLOAT, [B, 1, "S", "T"])]
    nodes = [helper.make_node("Concat", ["past_key_values.0.key", "k"], ["present.0.key"], axis=-2),
             helper.make_node("Concat", ["past_key_values.0.value", "v"], ["present.0.value"], axis=-2),
             helper.make_node("Attention", ["q", "present.0.key", "present.0.value"] + ([] if causal else ["m"]), ["y"], is_causal=int(causal))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [B, H, "T", D]),
               helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, [B, H, "T", D])]
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["past_key_values.0.key"], ["s"]))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", opset)])


def test_synthetic_graph_runs_in_place():
    import onnxruntime as ort

    model = _synthetic()
    rewrite_kv_in_place(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    P, S, C = 3, 2, 8
    key = np.zeros((1, 2, C, 4), np.float32)
    value = np.zeros((1, 2, C, 4), np.float32)
    key[:, :, :P], value[:, :, :P] = rng.normal(size=(2, 1, 2, P, 4)).astype(np.float32)
    q, k, v = rng.normal(size=(3, 1, 2, S, 4)).astype(np.float32)
    mask = np.zeros((1, 1, S, P + S), np.float32)
    mask[..., 0, -1] = -np.inf  # causal: the first new query does not see the second new key
    bufs = [ort.OrtValue.ortvalue_from_numpy(a) for a in (key, value)]
    binding = session.io_binding()
    for name, x in (("input_ids", np.zeros((1, S), np.int64)), ("attention_mask", np.ones((1, P + S), np.int64)), ("q", q), ("k", k), ("v", v), ("m", mask)):
        binding.bind_cpu_input(name, x)
    binding.bind_output("y", "cpu")
    for kind, buf in zip(("key", "value"), bufs):
        binding.bind_ortvalue_input(f"past_key_values.0.{kind}", buf)
        binding.bind_ortvalue_output(f"present.0.{kind}", buf)
    session.run_with_iobinding(binding)
    got = binding.get_outputs()[0].numpy()
    np.testing.assert_array_equal(key[:, :, P:P + S], k)  # written in place into the numpy array's memory
    np.testing.assert_array_equal(value[:, :, P:P + S], v)
    assert not key[:, :, P + S:].any()
    ref = ort.InferenceSession(_synthetic().SerializeToString(), providers=["CPUExecutionProvider"])
    want = ref.run(["y"], {"input_ids": np.zeros((1, S), np.int64), "attention_mask": np.ones((1, P + S), np.int64), "q": q, "k": k, "v": v, "m": mask,
                           "past_key_values.0.key": key[:, :, :P].copy(), "past_key_values.0.value": value[:, :, :P].copy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"opset": 20}, "opset-23 or -24"),
    ({"causal": True}, "no explicit mask"),
    ({"extra_reader": True}, "read by a ReduceSum"),
])
def test_refuses_graphs_it_cannot_rewrite(kwargs, match):
    with pytest.raises(EngineError, match=match):
        rewrite_kv_in_place(_synthetic(**kwargs))
