"""use_native_gqa: structure, applicability, negative cases (parity: tests/test_parity.py and
tests/backends/test_onnx.py run every GQA architecture through it)."""

import onnx
import pytest
import torch
from conftest import TEST_SETTINGS, steerable
from tiny_models import tiny_model

from steerc.capture.io_spec import DecoderGeometry
from steerc.build.steerable import capture_steerable
from steerc.errors import PassError
from steerc.passes import NativeGqaSettings, use_native_gqa
from steerc.passes.attention_sites import get_arg

aten = torch.ops.aten


@pytest.mark.parametrize("arch, kv_heads", [("llama", 2), ("mistral", 1), ("qwen2", 2), ("gemma3", 2)])
def test_sdpa_reads_grouped_kv(arch, kv_heads):
    _, sp = steerable(arch)
    (report,) = [r for r in sp.reports if r.name == "use_native_gqa"]
    assert report.sites_per_layer == {0: 1, 1: 1}
    for node in sp.program.graph_module.graph.nodes:
        if node.target == aten.scaled_dot_product_attention.default:
            assert get_arg(node, "enable_gqa") is True
            assert node.args[1].meta["val"].shape[1] == kv_heads and node.args[2].meta["val"].shape[1] == kv_heads
            assert node.args[0].meta["val"].shape[1] == 4


@pytest.mark.parametrize("arch", ["phi3", "gpt2", "llama-eager", "gemma2"])
def test_skipped_for_multi_head_or_eager_models(arch):
    _, sp = steerable(arch)
    assert [r.name for r in sp.reports] == ["insert_steering_bias"]


def test_settings_for_model():
    mha = DecoderGeometry(2, 4, 4, 16, 64, 128)
    gqa = DecoderGeometry(2, 4, 2, 16, 64, 128)
    assert NativeGqaSettings.for_model(mha, "M") is None
    assert NativeGqaSettings.for_model(gqa, "M", "eager") is None
    assert NativeGqaSettings.for_model(gqa, "M") == NativeGqaSettings(4, 2, "M")
    with pytest.raises(ValueError, match="multiple"):
        NativeGqaSettings(num_heads=4, num_kv_heads=3)


def test_second_application_finds_nothing_and_raises():
    _, sp = steerable("llama")
    before = str(sp.program.graph_module.graph)
    with pytest.raises(PassError, match="found no SDPA site fed by repeated K/V"):
        use_native_gqa(sp.program.graph_module, NativeGqaSettings(4, 2, "LlamaForCausalLM"))
    assert str(sp.program.graph_module.graph) == before


def test_kv_repeat_chain_is_gone_from_the_graph():
    model = tiny_model("llama")
    sp = capture_steerable(model, TEST_SETTINGS)
    expands = [n for n in sp.program.graph_module.graph.nodes if n.target == aten.expand.default and n.meta["val"].dim() == 5]
    assert expands == []  # the [B, Hkv, n_rep, T, D] expansions of repeat_kv were dead and removed


def test_onnx_attention_takes_grouped_kv(exported_onnx):
    path = exported_onnx("mistral")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    values = [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2
    for node in attention:
        assert shapes[node.input[1]][1] == 1 and shapes[node.input[0]][1] == 4  # K has the single KV head, Q all four
