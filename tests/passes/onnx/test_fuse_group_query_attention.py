"""``fuse_group_query_attention``: an in-place step graph's attention as ONNX Runtime's GroupQueryAttention.

Parity is against the eager reference (the spec), per tiny architecture, on a left-padded
prefill and a decode step (shapes other than the traced one), with zero bias (the unmodified
model) and a random per-layer, per-head bias (the explicit additive mask); the graph runs on KV
buffers of a larger capacity than the call needs, past and present bound to one buffer.
"""

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx_steps import CALLS, rewritten_copies, steerable_in, step_feed
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


@pytest.fixture(scope="module")
def in_place_graphs(exported_onnx, tmp_path_factory):
    """``get(arch)``: the path of a private copy of the tiny step graph, rewritten in place (kv_in_place)."""
    get = rewritten_copies(exported_onnx, kv_in_place_file, tmp_path_factory, "in-place")
    return lambda arch: get(arch)[0]


@pytest.fixture(scope="module")
def gqa_graphs(in_place_graphs, tmp_path_factory):
    """``get(arch)``: (path, report) of a copy of the in-place graph, rewritten to GroupQueryAttention."""
    return rewritten_copies(in_place_graphs, group_query_attention_file, tmp_path_factory, "gqa")


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


def _left_aligned_rows(arch: str, lengths: list[int], seed: int = 5):
    """A decode step of rows of ``lengths`` past positions, each *left-aligned* in buffers of the
    longest (ones on ``[0, n + 1)`` of its mask, zeros after), and each row's own solo feed."""
    sp = steerable_in(arch, "fp32")
    g = sp.geometry
    B, P = len(lengths), max(lengths)
    rng = np.random.default_rng(seed)
    names = [s.name for s in sp.inputs]
    kv_names = names[3:-1]
    ids = rng.integers(0, g.vocab_size, (B, 1))
    pos = np.array([[n] for n in lengths])
    mask = np.zeros((B, P + 1), np.int64)
    kv = {n: np.zeros((B, g.num_kv_heads, P, g.head_dim), np.float32) for n in kv_names}
    bias = rng.normal(0, 2, (B, g.num_layers, g.num_heads, P + 1)).astype(np.float32)
    solo = []
    for b, n in enumerate(lengths):
        mask[b, :n + 1] = 1
        own = {k: rng.normal(0, 1, (1, g.num_kv_heads, n, g.head_dim)).astype(np.float32) for k in kv_names}
        for k in kv_names:
            kv[k][b, :, :n] = own[k][0]
        solo.append(dict(zip(names, (ids[b:b + 1], pos[b:b + 1], np.ones((1, n + 1), np.int64)))) | own | {names[-1]: bias[b:b + 1, :, :, :n + 1]})
    batch = dict(zip(names, (ids, pos, mask))) | kv | {names[-1]: bias}
    return batch, solo


@pytest.mark.parametrize("op", ["GroupQueryAttention", "Attention"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])  # not gemma3: its sliding-window mask is placed by the batch's width
def test_left_aligned_rows_compute_as_alone(arch, op, gqa_graphs, in_place_graphs):
    """Rows of different lengths, each at the start of the batch buffers (the decode batch's layout
    on in-place engines): each row's logits and new KV equal its solo run's exactly, and the eager
    reference's on its own inputs. GroupQueryAttention attends to each row's own keys; the
    standard Attention of ``kv_in_place`` writes each row at its own length (its per-row write
    index) and sees the rest masked, after its keys."""
    if op == "GroupQueryAttention":
        path, report = gqa_graphs(arch)
        assert report["aligned_rows"] is True
    else:
        path = in_place_graphs(arch)
    lengths = [9, 4, 6]
    batch, solo = _left_aligned_rows(arch, lengths)
    logits, present = run_in_place(path, batch)
    model = steerable(arch)[0]
    for b, (n, feed) in enumerate(zip(lengths, solo)):
        alone, alone_present = run_in_place(path, feed)
        np.testing.assert_array_equal(logits[b], alone[0])  # bit for bit: the same keys at the same indices
        for got, want in zip(present, alone_present):
            np.testing.assert_array_equal(got[b, :, :n + 1], want[0])
        ids, pos, mask, kv, steer = _torch_inputs(feed, arch)
        ref = reference_step(model, ids, pos, mask, kv, steer)
        np.testing.assert_allclose(logits[b], ref[0][0].numpy(), atol=2e-5, rtol=0)


def test_left_padded_rows_are_unchanged(gqa_graphs):
    """A mask that ends in ones (the left-padded layout every other call uses) still attends to
    every position: the batch equals each row run alone with its padding."""
    path, _ = gqa_graphs("llama")
    feed = step_feed("llama", "fp32", "decode", seed=4)
    names = list(feed)
    logits, _ = run_in_place(path, feed)
    for b in range(feed[names[0]].shape[0]):
        alone, _ = run_in_place(path, {k: v[b:b + 1] for k, v in feed.items()})
        np.testing.assert_allclose(logits[b], alone[0], atol=1e-6, rtol=0)
