"""share_attention: structure, settings and CLI syntax, negative cases, and parity with the
eager sharing reference (steerc.reference.reference_shared_step) on 4-layer tiny models
(SDPA with GQA, Qwen2, Gemma3 with a sliding window, eager Llama), prefill / decode / a
chunk after a past, left padding, zero and random steering bias."""

import copy
import functools

import pytest
import torch
from conftest import TEST_SETTINGS, assert_step_close, step_inputs

from steerc.capture import run_program
from steerc.capture.io_spec import DecoderGeometry
from steerc.build.steerable import capture_steerable
from steerc.errors import PassError
from steerc.passes import ShareAttentionSettings, find_attention_sites, parse_share_groups, share_attention
from steerc.reference import reference_importance, reference_shared_step, reference_step
from steerc.settings import CompileSettings

aten = torch.ops.aten
GROUPS = ((1, 2, 3),)  # layer 0 unshared, 1 computes P, 2 and 3 reuse it
SHARED = (2, 3)


def _four_layers(name: str):
    """A 4-layer tiny model (tests/tiny_models.py has 2 layers, too few to share)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from tiny_models import COMMON

    common = {**COMMON, "num_hidden_layers": 4}
    torch.manual_seed(0)
    if name in ("llama", "llama-eager"):
        model = LlamaForCausalLM(LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2))
    elif name == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2))
    elif name == "gemma3":
        layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4, layer_types=layer_types))
    else:
        raise KeyError(name)
    model = model.eval()
    model.set_attn_implementation("eager" if name.endswith("eager") else "sdpa")
    return model


@functools.lru_cache(maxsize=None)
def shared(name: str, groups=GROUPS):
    """(model, shared SteerableProgram, unshared SteerableProgram), captured once per session."""
    model = _four_layers(name)
    return model, capture_steerable(model, CompileSettings(max_seq_len=256, max_batch=8, share_attention=groups)), capture_steerable(model, TEST_SETTINGS)


def _shared_layout(kv, shared_layers=SHARED):
    return [t for i, t in enumerate(kv) if not (i % 2 == 0 and i // 2 in shared_layers)]


SHAPES = {  # (batch, past, new, left padding of row 0)
    "prefill": (1, 0, 7, 0),
    "decode": (2, 6, 1, 0),
    "chunk-after-past": (3, 4, 5, 2),
    "padded-decode": (3, 5, 1, 2),
}


@pytest.mark.parametrize("bias_kind", ["zero", "random"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "llama-eager"])
def test_equals_eager_sharing_reference(arch, shape, bias_kind):
    model, sp, _ = shared(arch)
    g = sp.geometry
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad)
    kv = _shared_layout(kv)
    bias = torch.zeros(B, g.num_layers, g.num_heads, P + S)
    if bias_kind == "random":
        bias = 2.0 * torch.randn(B, g.num_layers, g.num_heads, P + S, generator=torch.Generator().manual_seed(7))
    logits, *present = run_program(sp.program)(ids, pos, mask, kv, bias)
    assert len(present) == 2 * g.num_layers - len(SHARED)
    ref = reference_shared_step(model, ids, pos, mask, kv, GROUPS, bias)
    assert_step_close((logits, present), ref, mask, S)
    if bias_kind == "random" and shape == "prefill":
        # The check has teeth: sharing changes the output, and the first layer's bias steers the group.
        full = reference_step(model, ids, pos, mask, step_inputs(g, B, P, S, pad)[3], bias)[0]
        assert (full - ref[0]).abs().max() > 1e-3
        other = bias.clone()
        other[:, 1] = 0.0
        assert (reference_shared_step(model, ids, pos, mask, kv, GROUPS, other)[0] - ref[0]).abs().max() > 1e-3


def test_shared_layers_bias_rows_have_no_effect():
    _, sp, _ = shared("llama")
    g = sp.geometry
    ids, pos, mask, kv = step_inputs(g, 1, 0, 6)
    kv = _shared_layout(kv)
    bias = torch.randn(1, g.num_layers, g.num_heads, 6, generator=torch.Generator().manual_seed(1))
    moved = bias.clone()
    moved[:, list(SHARED)] += 5.0
    run = run_program(sp.program)
    torch.testing.assert_close(run(ids, pos, mask, kv, bias)[0], run(ids, pos, mask, kv, moved)[0], atol=0, rtol=0)


def test_reference_without_groups_is_the_unmodified_model():
    model, sp, _ = shared("llama")
    ids, pos, mask, kv = step_inputs(sp.geometry, 2, 3, 4)
    torch.testing.assert_close(reference_shared_step(model, ids, pos, mask, kv, ())[0], reference_step(model, ids, pos, mask, kv)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "llama-eager"])
def test_importance_of_shared_layers_is_the_first_layers(arch):
    model, sp, _ = shared(arch)
    g = sp.geometry
    ids, pos, mask, kv = step_inputs(g, 3, 4, 5, 2)
    kv = _shared_layout(kv)
    bias = 2.0 * torch.randn(3, g.num_layers, g.num_heads, 9, generator=torch.Generator().manual_seed(3))
    outs = run_program(sp.analysis)(ids, pos, mask, kv, bias)
    outputs, importance, queries = outs[: len(sp.outputs)], outs[len(sp.outputs)], outs[len(sp.outputs) + 1]
    for layer in SHARED:
        torch.testing.assert_close(importance[:, layer], importance[:, 1], atol=0, rtol=0)
        torch.testing.assert_close(queries[:, layer], queries[:, 1], atol=0, rtol=0)  # attn_queries: the group's first layer's too
    ref = reference_importance(model, ids, pos, mask, kv, bias, groups=GROUPS)
    keys = mask.bool()[:, None, None, :].expand_as(ref)
    torch.testing.assert_close(importance[keys], ref[keys], atol=2e-6, rtol=0)
    for got, want in zip(outputs, run_program(sp.program)(ids, pos, mask, kv, bias)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "llama-eager"])
def test_structure(arch):
    _, sp, plain = shared(arch)
    graph = sp.program.graph_module.graph
    nodes = [n for n in graph.nodes if n.op == "call_function"]

    def module_paths(node):
        return [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]

    def linears(layer, proj):
        return [n for n in nodes if n.target == aten.linear.default and any(p.endswith(f"layers.{layer}.self_attn.{proj}") for p in module_paths(n))]

    for layer in SHARED:  # Q and K projections are dead and gone, V and O stay
        assert linears(layer, "q_proj") == [] and linears(layer, "k_proj") == []
        assert len(linears(layer, "v_proj")) == 1 and len(linears(layer, "o_proj")) == 1
    for layer in (0, 1):
        assert len(linears(layer, "q_proj")) == 1 and len(linears(layer, "k_proj")) == 1
    sites = {s.layer: s for s in find_attention_sites(sp.program.graph_module)}
    assert sorted(sites) == [0, 1]  # shared layers have no attention site of their own
    assert sites[1].kind == "eager_softmax"  # the group's first layer computes P explicitly
    if arch == "llama":
        assert sites[0].kind == "sdpa" and sum(n.target == aten.scaled_dot_product_attention.default for n in nodes) == 1
    # The shared layers' key caches are gone from the inputs and outputs, and from the signature.
    placeholders = [n.target for n in graph.nodes if n.op == "placeholder"]
    assert "past_key_values_4" not in placeholders and "past_key_values_6" not in placeholders
    assert "past_key_values_5" in placeholders and "past_key_values_7" in placeholders
    sig = sp.program.graph_signature
    assert len(sig.user_inputs) == len(plain.program.graph_signature.user_inputs) - 2
    assert len(sig.user_outputs) == len(plain.program.graph_signature.user_outputs) - 2
    assert [s.name for s in sp.inputs][3:-1] == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value",
                                                 "past_key_values.2.value", "past_key_values.3.value"]
    assert [s.name for s in sp.outputs][1:] == ["present.0.key", "present.0.value", "present.1.key", "present.1.value", "present.2.value", "present.3.value"]
    (report,) = [r for r in sp.reports if r.name == "share_attention"]
    assert [(s.layer, s.mask) for s in report.sites] == [(1, "explicit_probs"), (2, "shared_from_1"), (3, "shared_from_1")]
    assert sp.share_attention == {"groups": [[1, 2, 3]], "shared_layers": [2, 3]} and sp.keyless_layers == (2, 3)


def test_unshared_compile_is_unchanged():
    """Without groups the pass is skipped and the program is what it was before the feature:
    the same nodes, signature and call structure (the compared program is captured with the
    share_attention pass removed from PASSES)."""
    import steerc.build.steerable as compiler

    model, _, plain = shared("llama")
    before = compiler.PASSES
    compiler.PASSES = tuple(p for p in before if p.__name__ != "share_attention")
    try:
        legacy = capture_steerable(model, TEST_SETTINGS)
    finally:
        compiler.PASSES = before
    assert [r.name for r in plain.reports] == ["insert_steering_bias", "use_native_gqa"]
    assert [(n.op, n.name, str(n.target)) for n in plain.program.graph_module.graph.nodes] == [(n.op, n.name, str(n.target)) for n in legacy.program.graph_module.graph.nodes]
    assert plain.program.graph_signature == legacy.program.graph_signature
    assert plain.program.module_call_graph[0].signature.in_spec == legacy.program.module_call_graph[0].signature.in_spec
    assert plain.program.module_call_graph[0].signature.out_spec == legacy.program.module_call_graph[0].signature.out_spec
    assert [s.name for s in plain.inputs] == [s.name for s in legacy.inputs] and plain.share_attention is None
    ids, pos, mask, kv = step_inputs(plain.geometry, 2, 3, 4)
    bias = torch.randn(2, 4, 4, 7)
    for a, b in zip(run_program(plain.program)(ids, pos, mask, kv, bias), run_program(legacy.program)(ids, pos, mask, kv, bias)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_two_groups():
    model, sp, _ = shared("qwen2", ((0, 1), (2, 3)))
    g = sp.geometry
    ids, pos, mask, kv = step_inputs(g, 2, 3, 4)
    kv = _shared_layout(kv, (1, 3))
    bias = torch.randn(2, g.num_layers, g.num_heads, 7, generator=torch.Generator().manual_seed(5))
    logits, *present = run_program(sp.program)(ids, pos, mask, kv, bias)
    assert_step_close((logits, present), reference_shared_step(model, ids, pos, mask, kv, ((0, 1), (2, 3)), bias), mask, 4)
    assert sp.keyless_layers == (1, 3)


def test_settings_validation_and_json():
    s = ShareAttentionSettings(groups=((1, 2, 3),), num_layers=4, num_heads=4, num_kv_heads=2, architecture="M")
    assert ShareAttentionSettings.from_json(s.to_json()) == s
    assert s.shared_layers == (2, 3) and s.source == {2: 1, 3: 1}
    with pytest.raises(ValueError, match="outside the model: it has 4 layers"):
        ShareAttentionSettings(groups=((2, 3, 4),), num_layers=4, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="overlap"):
        ShareAttentionSettings(groups=((0, 1, 2), (2, 3)), num_layers=4, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="single layer"):
        ShareAttentionSettings(groups=((2,),), num_layers=4, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="contiguous and ascending"):
        ShareAttentionSettings(groups=((1, 3),), num_layers=4, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="contiguous and ascending"):
        ShareAttentionSettings(groups=((3, 2),), num_layers=4, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="at least one group"):
        ShareAttentionSettings(groups=(), num_layers=4, num_heads=4, num_kv_heads=2)
    geometry = DecoderGeometry(4, 4, 2, 16, 64, 128)
    assert ShareAttentionSettings.for_model(geometry, "M") is None
    assert ShareAttentionSettings.for_model(geometry, "M", "sdpa", groups=((1, 2),)).groups == ((1, 2),)


def test_compile_settings_field():
    s = CompileSettings(share_attention=[[20, 21, 22]])
    assert s.share_attention == ((20, 21, 22),)
    assert CompileSettings.from_json(s.to_json()) == s
    assert CompileSettings().share_attention == ()
    with pytest.raises(ValueError, match="overlap"):
        CompileSettings(share_attention=((1, 2), (2, 3)))


def test_group_outside_the_model_fails_the_compile():
    model = _four_layers("llama")
    with pytest.raises(PassError, match="outside the model"):
        capture_steerable(model, CompileSettings(max_seq_len=256, max_batch=8, share_attention=((2, 3, 4, 5),)))


@pytest.mark.parametrize("text, groups", [("20-29", (tuple(range(20, 30)),)), ("20-24,25-29", (tuple(range(20, 25)), tuple(range(25, 30)))), (" 1-2 , 4-5 ", ((1, 2), (4, 5)))])
def test_parse_groups(text, groups):
    assert parse_share_groups(text) == groups


@pytest.mark.parametrize("text, message", [
    ("20", "not a layer range"), ("20-", "not a layer range"), ("a-b", "not a layer range"), ("20-29;30-31", "not a layer range"),
    ("5-5", "at least two layers"), ("9-3", "at least two layers"), ("20-25,25-29", "overlap"), ("", "needs layer ranges"), ("-1-3", "not a layer range"),
])
def test_parse_groups_rejects_bad_syntax(text, message):
    with pytest.raises(ValueError, match=message):
        parse_share_groups(text)


def test_second_application_raises():
    _, sp, _ = shared("llama")
    gm = copy.deepcopy(sp.program.graph_module)
    with pytest.raises(PassError, match="applied twice"):
        share_attention(gm, ShareAttentionSettings(groups=((1, 2),), num_layers=4, num_heads=4, num_kv_heads=2))


def test_requires_the_steering_bias_input():
    from steerc.capture import CaptureShapes, capture_decoder_step, decoder_inputs

    model, sp, _ = shared("llama")
    ep = capture_decoder_step(model, sp.geometry, decoder_inputs(sp.geometry, "float32", with_bias=False), CaptureShapes(4, 64))
    with pytest.raises(PassError, match="run insert_steering_bias before share_attention"):
        share_attention(ep.graph_module, ShareAttentionSettings(groups=((1, 2),), num_layers=4, num_heads=4, num_kv_heads=2))
