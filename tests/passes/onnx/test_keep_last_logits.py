"""``keep_last_logits``: the LM head on the final position only.

Parity per tiny architecture against the eager reference (the spec) and against the graph it
rewrote: the last position's logits and every present KV, on calls of shapes other than the
traced one (left-padded prefill after a past, a decode step), zero and random bias. Gemma 2's
final softcap (Div, Tanh, Mul after the head) is the elementwise chain the pass walks through.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx_steps import rewritten_copies, steerable_in
from steps import step_inputs, steerable

from tiny_models import TINY_MODELS

from steerc.backends.onnx import create_session
from steerc.errors import EngineError
from steerc.passes.onnx import OnnxGraph, keep_last_logits
from steerc.passes.onnx.keep_last_logits import keep_last_logits_model
from steerc.reference import reference_step
from steerc.settings import CompileSettings

# (batch, past, new tokens, left padding of row 0): none is the traced shape (5 new after 3 past)
SHAPES = {"prefill": (3, 0, 7, 2), "chunk": (2, 4, 6, 1), "decode": (2, 9, 1, 3)}


@pytest.fixture(scope="module")
def rewritten(exported_onnx, tmp_path_factory):
    """``get(arch)``: (original graph, rewritten copy, the pass's report)."""
    get = rewritten_copies(exported_onnx, lambda path: keep_last_logits(OnnxGraph(path), CompileSettings()), tmp_path_factory, "last-logits")
    return lambda arch: (exported_onnx(arch), *get(arch))


def _feed(arch: str, shape: str, bias: str) -> dict:
    sp = steerable_in(arch, "fp32")
    g = sp.geometry
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad, seed=7)
    steer = torch.zeros(B, g.num_layers, g.num_heads, P + S)
    if bias == "random":
        steer = 2.0 * torch.randn(B, g.num_layers, g.num_heads, P + S, generator=torch.Generator().manual_seed(8))
    return {s.name: t.numpy().astype(s.dtype) for s, t in zip(sp.inputs, (ids, pos, mask, *kv, steer))}


def test_structure(rewritten):
    original, path, report = rewritten("llama")
    assert report.name == "keep_last_logits" and report.entry["positions"] == "last" and report.entry["head"] == "MatMul"
    proto = onnx.load(str(path), load_external_data=False)
    before = onnx.load(str(original), load_external_data=False)
    assert len(proto.graph.node) == len(before.graph.node) + 1
    slices = [n for n in proto.graph.node if n.name == "keep_last_logits/slice"]
    assert len(slices) == 1
    head = next(n for n in proto.graph.node if n.name == report.entry["head_node"])
    assert head.input[0] == slices[0].output[0]
    logits = next(o for o in proto.graph.output if o.name == "logits")
    assert [d.dim_value if d.HasField("dim_value") else d.dim_param for d in logits.type.tensor_type.shape.dim][1:] == [1, 128]
    assert [o.name for o in proto.graph.output] == [o.name for o in before.graph.output]


@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_last_position_equals_the_reference_and_the_original(arch, rewritten):
    original, path, _ = rewritten(arch)
    sp = steerable_in(arch, "fp32")
    rewritten_session, original_session = create_session(path), create_session(original)
    for shape in SHAPES:
        for bias in ("zero", "random"):
            feed = _feed(arch, shape, bias)
            got_logits, *got_present = rewritten_session.run(None, feed)
            all_logits, *all_present = original_session.run(None, feed)
            B, S = feed["input_ids"].shape
            assert got_logits.shape == (B, 1, all_logits.shape[-1])
            np.testing.assert_allclose(got_logits[:, 0], all_logits[:, -1], atol=1e-5, rtol=0)
            for got, want in zip(got_present, all_present):
                np.testing.assert_array_equal(got, want)  # the layers below the head are untouched
            ids, pos, mask = (torch.from_numpy(feed[s.name]) for s in sp.inputs[:3])
            kv = [torch.from_numpy(feed[s.name]) for s in sp.inputs[3:-1]]
            steer = torch.from_numpy(feed[sp.inputs[-1].name])
            ref_logits, _ = reference_step(steerable(arch)[0], ids, pos, mask, kv, None if bias == "zero" else steer)
            torch.testing.assert_close(torch.from_numpy(got_logits[:, 0]), ref_logits[:, -1], atol=2e-5, rtol=0, msg=lambda m: f"{shape}, {bias} bias: {m}")


def test_gemma2_softcap_chain_is_walked(rewritten):
    _, path, report = rewritten("gemma2")
    proto = onnx.load(str(path), load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}
    assert producer["logits"].op_type != report.entry["head"]  # the softcap's last op makes the logits
    assert "Tanh" in {n.op_type for n in proto.graph.node}


def test_running_twice_raises(rewritten, tmp_path):
    _, path, _ = rewritten("qwen2")
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(EngineError, match="already holds one position"):
        keep_last_logits_model(proto)


def test_logits_not_made_by_a_head_raise():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["logits"], axis=-1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", 8])])
    with pytest.raises(EngineError, match="not an LM head"):
        keep_last_logits_model(helper.make_model(g))
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 8])])
    with pytest.raises(EngineError, match="no 'logits' output"):
        keep_last_logits_model(helper.make_model(g))


def test_logits_setting_validates_and_round_trips():
    with pytest.raises(ValueError, match="logits must be one of"):
        CompileSettings(logits="first")
    settings = CompileSettings(logits="all")
    assert CompileSettings.from_dict(settings.to_dict()).logits == "all"
    assert not keep_last_logits.wanted(settings) and keep_last_logits.wanted(CompileSettings())
