"""``fuse_attention_layout``: each layer's reshapes, transposes and KV concats go into its Attention
on 3-D inputs; logits and presents equal the exported graph's, unsteered and steered."""

import collections
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from steerc.passes.onnx.fuse_attention_layout import fuse_attention_layout_file, rewrite_attention_layout


def _ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_rewrites_the_tiny_engine(tiny_engine):
    model = onnx.load(str(tiny_engine / "model.onnx"), load_external_data=False)
    before = _ops(model)
    report = rewrite_attention_layout(model)
    after = _ops(model)
    assert report["layers"] == before["Attention"] == after["Attention"] and report["left"] == 0
    assert before["Concat"] - after["Concat"] == 2 * report["layers"]  # the KV concats went into Attention
    assert before["Transpose"] - after["Transpose"] == 4 * report["layers"] and before["Reshape"] - after["Reshape"] == 4 * report["layers"]
    assert report["nodes_removed"] == sum(before.values()) - sum(after.values()) == 10 * report["layers"]
    for node in model.graph.node:
        if node.op_type == "Attention":
            assert node.input[4].startswith("past_key_values.") and node.output[1].startswith("present.")
    with pytest.raises(RuntimeError, match="no Attention"):
        rewrite_attention_layout(model)  # not twice


def _feeds(session, past: int, steered: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    shapes = {i.name: i.shape for i in session.get_inputs()}
    new = 3
    for name, shape in shapes.items():
        if name == "input_ids":
            feeds[name] = rng.integers(0, 50, (1, new)).astype(np.int64)
        elif name == "position_ids":
            feeds[name] = np.arange(past, past + new, dtype=np.int64)[None]
        elif name == "attention_mask":
            feeds[name] = np.ones((1, past + new), np.int64)
        elif name.startswith("past_key_values."):
            feeds[name] = rng.standard_normal((1, shape[1], past, shape[3])).astype(np.float32)
        elif name == "steer_bias":
            bias = np.zeros((1, shape[1], shape[2], past + new), np.float32)
            feeds[name] = rng.standard_normal(bias.shape).astype(np.float32) if steered else bias
    return feeds


@pytest.mark.parametrize("past", [0, 5])
@pytest.mark.parametrize("steered", [False, True])
def test_outputs_equal_the_exported_graph(tiny_engine, tmp_path, past, steered):
    folder = tmp_path / "engine"
    shutil.copytree(tiny_engine, folder)
    reference = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = _feeds(reference, past, steered)
    expected = reference.run(None, feeds)
    fuse_attention_layout_file(folder / "model.onnx")
    fused = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in fused.get_outputs()] == [o.name for o in reference.get_outputs()]
    for name, got, want in zip([o.name for o in fused.get_outputs()], fused.run(None, feeds), expected):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
