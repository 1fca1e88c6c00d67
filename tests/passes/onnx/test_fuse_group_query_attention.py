"""``fuse_group_query_attention``: an in-place step graph's attention as ONNX Runtime's GroupQueryAttention.

Parity is against the eager reference (the spec), per tiny architecture, on a left-padded
prefill and a decode step (shapes other than the traced one), with zero bias (the unmodified
model) and a random per-layer, per-head bias (the explicit additive mask); the graph runs on KV
buffers of a larger capacity than the call needs, past and present bound to one buffer.
"""

import collections
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx_steps import CALLS, steerable_in, step_feed
from steps import assert_step_close, steerable

from tiny_models import TINY_MODELS

from steerc.errors import EngineError
from steerc.passes.onnx.fuse_group_query_attention import group_query_attention_file, rewrite_group_query_attention
from steerc.passes.onnx.kv_in_place import kv_in_place_file, rewrite_kv_in_place
from steerc.reference import reference_step

# Decomposed attention (eager capture, GPT-2): no fused Attention, so no in-place graph to start from
# (kv_in_place refuses them; checked below so the list cannot go stale).
NOT_IN_PLACE = ("llama-eager", "gemma2", "gpt2")
FUSED = [a for a in TINY_MODELS if a not in NOT_IN_PLACE]  # gemma3: with its query/key head norms


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _rewritten_copies(source, rewrite, tmp_path_factory, tag):
    """``get(arch)``: a private copy of the folder of ``source(arch)``'s graph, ``rewrite`` run on the
    copy once per arch; ``(path, rewrite's report)``."""
    made = {}

    def get(arch):
        if arch not in made:
            src = source(arch)
            dest = tmp_path_factory.mktemp(f"{arch}-{tag}") / "engine"
            shutil.copytree(src.parent, dest)
            made[arch] = (dest / src.name, rewrite(dest / src.name))
        return made[arch]

    return get


@pytest.fixture(scope="module")
def in_place_graphs(exported_onnx, tmp_path_factory):
    """``get(arch)``: the path of a private copy of the tiny step graph, rewritten in place (kv_in_place)."""
    get = _rewritten_copies(exported_onnx, kv_in_place_file, tmp_path_factory, "in-place")
    return lambda arch: get(arch)[0]


@pytest.fixture(scope="module")
def gqa_graphs(in_place_graphs, tmp_path_factory):
    """``get(arch)``: (path, report) of a copy of the in-place graph, rewritten to GroupQueryAttention."""
    return _rewritten_copies(in_place_graphs, group_query_attention_file, tmp_path_factory, "gqa")


def run_in_place(path, feed: dict, slack: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run an in-place graph on ``feed`` (the concat contract's inputs) with KV buffers of
    capacity P+S+slack, one OrtValue bound as past and present; returns logits and the
    presents cut to P+S."""
    import onnxruntime as ort

    from steerc.backends.onnx import create_session

    session = create_session(path)
    names = [i.name for i in session.get_inputs()]
    B, S = feed["input_ids"].shape
    binding = session.io_binding()
    binding.bind_output("logits", "cpu")  # first: get_outputs() lists the outputs in binding order
    buffers = []
    for name in names:
        if name.startswith("past_key_values."):
            past = feed[name]  # [B, Hkv, P, D]
            buf = np.zeros((*past.shape[:2], past.shape[2] + S + slack, past.shape[3]), past.dtype)
            buf[:, :, :past.shape[2]] = past
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("present." + name[len("past_key_values."):], value)
            buffers.append(buf)
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(feed[name]))
    session.run_with_iobinding(binding)
    total = feed["attention_mask"].shape[1]
    return binding.get_outputs()[0].numpy(), [b[:, :, :total] for b in buffers]


def _torch_inputs(feed: dict, arch: str):
    sp = steerable_in(arch, "fp32")
    ids, pos, mask = (torch.from_numpy(feed[s.name]) for s in sp.inputs[:3])
    kv = [torch.from_numpy(feed[s.name]) for s in sp.inputs[3:-1]]
    return ids, pos, mask, kv, torch.from_numpy(feed[sp.inputs[-1].name])


def test_structure_on_the_tiny_llama(gqa_graphs, in_place_graphs):
    path, report = gqa_graphs("llama")
    before, after = _ops(in_place_graphs("llama")), _ops(path)
    layers = before["Attention"]
    assert report["op"] == "GroupQueryAttention" and report["sites"] == layers == 2 and report["nodes"] == sum(after.values())
    assert after["GroupQueryAttention"] == layers and after["Attention"] == 0
    assert after["TensorScatter"] == 0 and after["Pad"] == 0  # the op writes the buffers and reads the unpadded mask
    assert after["RotaryEmbedding"] == before["RotaryEmbedding"] == 2 * layers  # now on the 3-D projections
    proto = onnx.load(str(path), load_external_data=False)
    producers = {o: n for n in proto.graph.node for o in n.output}
    for out in proto.graph.output:
        if out.name.startswith("present."):
            assert producers[out.name].op_type == "GroupQueryAttention"
    for node in proto.graph.node:
        if node.op_type == "GroupQueryAttention":
            assert node.domain == "com.microsoft" and node.input[3].startswith("past_key_values.") and not node.input[10].endswith("/padded")
    assert any(o.domain == "com.microsoft" for o in proto.opset_import)
    with pytest.raises(EngineError, match="no Attention node"):
        rewrite_group_query_attention(proto)  # not twice


@pytest.mark.parametrize("bias", ["zero", "random"])
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("arch", FUSED)
def test_equals_the_eager_reference(arch, call, bias, gqa_graphs):
    path, _ = gqa_graphs(arch)
    feed = step_feed(arch, "fp32", call)
    bias_name = steerable_in(arch, "fp32").inputs[-1].name
    if bias == "zero":
        feed[bias_name] = np.zeros_like(feed[bias_name])
    ids, pos, mask, kv, steer = _torch_inputs(feed, arch)
    model = steerable(arch)[0]
    ref = reference_step(model, ids, pos, mask, kv) if bias == "zero" else reference_step(model, ids, pos, mask, kv, steer)
    logits, present = run_in_place(path, feed)
    assert_step_close((logits, present), ref, mask, ids.shape[1], atol=2e-5)
    if bias == "random":  # the check has teeth: the bias moves the logits well beyond the tolerance
        plain = reference_step(model, ids, pos, mask, kv)[0]
        rows = mask[:, -ids.shape[1]:].bool()
        assert (ref[0][rows] - plain[rows]).abs().max() > 1e-2


def test_equals_the_in_place_graph_it_rewrote(gqa_graphs, in_place_graphs):
    feed = step_feed("qwen2", "fp32", "decode", seed=11)
    got, want = run_in_place(gqa_graphs("qwen2")[0], feed, slack=9), run_in_place(in_place_graphs("qwen2"), feed, slack=9)
    np.testing.assert_allclose(got[0], want[0], atol=2e-5, rtol=0)


def test_head_norms_stay_before_the_rotary(gqa_graphs, in_place_graphs):
    before, after = _ops(in_place_graphs("gemma3")), _ops(gqa_graphs("gemma3")[0])
    assert after["GroupQueryAttention"] == 2 and after["RMSNormalization"] == before["RMSNormalization"]  # the q/k norms are kept, rewired


def test_refuses_a_norm_over_another_axis(in_place_graphs):
    from onnx import helper

    proto = onnx.load(str(in_place_graphs("gemma3")), load_external_data=False)
    producers = {o: n for n in proto.graph.node for o in n.output}
    rotary = producers[next(n for n in proto.graph.node if n.op_type == "Attention").input[0]]
    norm = producers[rotary.input[0]]
    kept = [a for a in norm.attribute if a.name != "axis"]
    del norm.attribute[:]
    norm.attribute.extend([*kept, helper.make_attribute("axis", 1)])
    with pytest.raises(EngineError, match="normalized over axis 1"):
        rewrite_group_query_attention(proto)


@pytest.mark.parametrize("arch", NOT_IN_PLACE)
def test_decomposed_attention_has_no_in_place_graph(arch, exported_onnx):
    with pytest.raises(EngineError, match="kv in-place"):
        rewrite_kv_in_place(onnx.load(str(exported_onnx(arch)), load_external_data=False))


def test_refuses_a_softcap(in_place_graphs):
    from onnx import helper

    proto = onnx.load(str(in_place_graphs("llama")), load_external_data=False)
    attention = next(n for n in proto.graph.node if n.op_type == "Attention")
    kept = [a for a in attention.attribute if a.name != "softcap"]
    del attention.attribute[:]
    attention.attribute.extend([*kept, helper.make_attribute("softcap", 30.0)])
    with pytest.raises(EngineError, match="softcap"):
        rewrite_group_query_attention(proto)


def test_refuses_a_concat_graph(exported_onnx):
    proto = onnx.load(str(exported_onnx("llama")), load_external_data=False)
    with pytest.raises(EngineError, match="expected TensorScatter"):
        rewrite_group_query_attention(proto)
    rewrite_kv_in_place(proto)
    rewrite_group_query_attention(proto)  # the same graph once in place
