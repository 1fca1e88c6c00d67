"""capture_attention_importance: structure, negative cases, and parity of ``attn_importance``
with the eager model's attention probabilities (steered, padded, prefill and decode shapes)."""

import copy

import pytest
import torch
from conftest import step_inputs, steerable
from tiny_models import TINY_MODELS

from steerc.capture import run_program
from steerc.errors import PassError
from steerc.passes import IMPORTANCE_OUTPUT, ImportanceSettings, capture_attention_importance
from steerc.reference import reference_importance

aten = torch.ops.aten

SHAPES = {"prefill": (1, 0, 7, 0), "decode": (2, 6, 1, 0), "padded-prefill": (3, 0, 6, 2), "chunk-after-past": (3, 4, 5, 2)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_importance_equals_eager_attention_column_sums(arch, shape):
    model, sp = steerable(arch)
    g = sp.geometry
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad)
    bias = 2.0 * torch.randn(B, g.num_layers, g.num_heads, P + S, generator=torch.Generator().manual_seed(3))
    *outputs, importance = run_program(sp.analysis)(ids, pos, mask, kv, bias)[: len(sp.outputs) + 1]
    ref = reference_importance(model, ids, pos, mask, kv, bias)
    assert importance.shape == (B, g.num_layers, g.num_heads, P + S)
    keys = mask.bool()[:, None, None, :].expand_as(ref)  # padded keys receive no defined value
    torch.testing.assert_close(importance[keys], ref[keys], atol=2e-6, rtol=0)
    # Each real query row's probabilities sum to 1: the totals count the real rows.
    rows = mask[:, -S:].sum(-1).float()
    torch.testing.assert_close(importance.sum(-1), rows[:, None, None].expand(B, g.num_layers, g.num_heads), atol=1e-4, rtol=0)
    # The analysis graph leaves the decoder's outputs unchanged.
    plain = run_program(sp.program)(ids, pos, mask, kv, bias)
    for got, want in zip(outputs, plain):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_importance_sees_the_steering_bias():
    model, sp = steerable("llama")
    g = sp.geometry
    ids, pos, mask, kv = step_inputs(g, 1, 0, 8)
    run = run_program(sp.analysis)
    at = len(sp.outputs)  # attn_importance follows the decoder's outputs
    plain = run(ids, pos, mask, kv, torch.zeros(1, g.num_layers, g.num_heads, 8))[at]
    bias = torch.zeros(1, g.num_layers, g.num_heads, 8)
    bias[..., 2:] = torch.log(torch.tensor(0.05))  # emphasise keys 0 and 1
    steered = run(ids, pos, mask, kv, bias)[at]
    assert (steered[..., :2].sum(-1) > plain[..., :2].sum(-1) + 0.5).all()


def test_structure_adds_one_output_and_keeps_attention_nodes():
    _, sp = steerable("mistral")
    report = sp.analysis_reports[0]
    assert report.name == "capture_attention_importance" and report.outputs_added == (IMPORTANCE_OUTPUT,)
    assert report.sites_per_layer == {0: 1, 1: 1}
    graph = sp.analysis.graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    importance = output.args[0][len(sp.outputs)]
    assert importance.meta["steerc_output"] == IMPORTANCE_OUTPUT and importance.target == aten.stack.default
    sdpa = [n for n in graph.nodes if n.target == aten.scaled_dot_product_attention.default]
    assert len(sdpa) == 2  # fused attention still computes the outputs
    assert len([n for n in graph.nodes if n.target == aten._softmax.default]) == 2  # the probabilities beside it
    assert sp.analysis.graph_signature.output_specs[len(sp.outputs)].arg.name == importance.name
    # The decoder graph itself is untouched.
    assert not any(n.target == aten.stack.default for n in sp.program.graph_module.graph.nodes)


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_eager_sites_sum_their_own_softmax(arch):
    _, sp = steerable(arch)
    graph = sp.analysis.graph_module.graph
    softmax_before = sum(1 for n in sp.program.graph_module.graph.nodes if n.target in (aten.softmax.int, aten._softmax.default))
    softmax_after = sum(1 for n in graph.nodes if n.target in (aten.softmax.int, aten._softmax.default))
    assert softmax_after == softmax_before  # no recomputation for the eager pattern


def test_second_application_raises():
    _, sp = steerable("llama")
    gm = copy.deepcopy(sp.analysis.graph_module)
    with pytest.raises(PassError, match="applied twice"):
        capture_attention_importance(gm, ImportanceSettings(2, 4, "LlamaForCausalLM"))


def test_requires_the_steering_bias_input():
    from steerc.capture import CaptureShapes, capture_decoder_step, decoder_inputs

    model, sp = steerable("llama")
    ep = capture_decoder_step(model, sp.geometry, decoder_inputs(sp.geometry, "float32", with_bias=False), CaptureShapes(4, 64))
    with pytest.raises(PassError, match="run insert_steering_bias before"):
        capture_attention_importance(ep.graph_module, ImportanceSettings(2, 4, "LlamaForCausalLM"))


def test_wrong_layer_count_raises():
    _, sp = steerable("llama")
    gm = copy.deepcopy(sp.program.graph_module)
    with pytest.raises(PassError, match="expected 0..2"):
        capture_attention_importance(gm, ImportanceSettings(3, 4, "LlamaForCausalLM"))


def test_settings_validation_and_json():
    s = ImportanceSettings(2, 4, "M")
    assert ImportanceSettings.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="num_layers"):
        ImportanceSettings(0, 4)
    with pytest.raises(ValueError, match="identifier"):
        ImportanceSettings(2, 4, mask_input="attention mask")
