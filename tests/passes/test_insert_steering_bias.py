"""insert_steering_bias: structure, negative cases, idempotence, every SDPA overload and mask kind."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import steerable
from tiny_models import tiny_model

from steerc.capture import rebuild_program, run_program
from steerc.build.steerable import capture_steerable
from steerc.errors import PassError
from steerc.passes import SteeringBiasSettings, find_attention_sites, insert_steering_bias
from steerc.passes.attention_sites import SDPA_MASK_ARGS, get_arg
from steerc.settings import CompileSettings

aten = torch.ops.aten
B, H, S, T, D = 2, 4, 3, 5, 8  # T > S: queries are the last S of T positions


def _ancestors(node):
    """Data ancestors: size queries (``sym_size``) are not followed into the tensor they measure."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n.target == aten.sym_size.int:
            continue
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def test_every_site_takes_the_bias_of_its_layer():
    for arch in ("llama", "gpt2", "gemma3"):
        _, sp = steerable(arch)
        gm = sp.program.graph_module
        bias = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
        assert bias.name == "steer_bias"
        steered = [n for n in gm.graph.nodes if "steerc_steered" in n.meta]
        assert sorted(n.meta["steerc_steered"] for n in steered) == list(range(sp.geometry.num_layers))
        for node in steered:
            if node.target in SDPA_MASK_ARGS:
                mask_name, causal_name = SDPA_MASK_ARGS[node.target]
                operand = get_arg(node, mask_name)  # the merged additive mask
                assert get_arg(node, causal_name) is False
            else:
                assert node.args[0].target == aten.add.Tensor
                operand = node.args[0].args[1]  # softmax(logits + bias)
            selects = [a for a in _ancestors(operand) if a.target == aten.select.int and a.args[0] is bias]
            assert [s.args[2] for s in selects] == [node.meta["steerc_steered"]], f"{arch}: {node.name}"
        assert sp.program.graph_signature.user_inputs[-1] == "steer_bias"
        report = sp.reports[0]
        assert report.sites_per_layer == {0: 1, 1: 1}
        assert report.inputs_added == ("steer_bias",)


def test_running_the_pass_twice_raises():
    _, sp = steerable("llama")
    settings = SteeringBiasSettings(num_layers=2, num_heads=4, architecture="LlamaForCausalLM")
    before = str(sp.program.graph_module.graph)
    with pytest.raises(PassError, match="applied twice"):
        insert_steering_bias(sp.program.graph_module, settings)
    assert str(sp.program.graph_module.graph) == before


def test_fewer_sites_than_layers_raises():
    model = tiny_model("llama")
    ep = torch.export.export(_StepOnly(model), (torch.randint(0, 128, (1, 4)),), strict=False)
    with pytest.raises(PassError, match=r"LlamaForCausalLM: found 2 attention site\(s\) on layers \[0, 1\] for 3 layers"):
        insert_steering_bias(ep.graph_module, SteeringBiasSettings(num_layers=3, num_heads=4, architecture="LlamaForCausalLM"))


def test_no_attention_site_raises_with_architecture():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Softmax(dim=-1))
    ep = torch.export.export(mlp, (torch.randn(2, 8),))
    with pytest.raises(PassError, match="MyMLP: no attention site found"):
        insert_steering_bias(ep.graph_module, SteeringBiasSettings(num_layers=1, num_heads=1, architecture="MyMLP"))


def test_wrong_head_count_raises():
    model = tiny_model("llama")
    ep = torch.export.export(_StepOnly(model), (torch.randint(0, 128, (1, 4)),), strict=False)
    with pytest.raises(PassError, match="4 query heads, expected 8"):
        insert_steering_bias(ep.graph_module, SteeringBiasSettings(num_layers=2, num_heads=8))


def test_site_matching_ignores_non_attention_softmax():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Softmax(dim=-1))
    ep = torch.export.export(model, (torch.randn(2, 3, 4, 8),))
    assert find_attention_sites(ep.graph_module) == []


class _StepOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


# --- every SDPA overload and mask kind, on hand-built graphs ------------------------------------

def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g) for n in (S, T, T)]


def _bool_mask():
    keep = torch.ones(B, 1, S, T, dtype=torch.bool).tril(T - S)
    keep[1, ..., 0] = False  # a padded key
    return keep


class _Site(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, q, k, v, m):
        if self.kind == "bool":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        if self.kind == "float":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.where(m, 0.0, -1e4))
        if self.kind == "none":
            return F.scaled_dot_product_attention(q, k, v)
        if self.kind == "is_causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.kind == "gqa":
            return F.scaled_dot_product_attention(q, k[:, :2], v[:, :2], attn_mask=m, enable_gqa=True)
        if self.kind == "math":
            return aten._scaled_dot_product_attention_math(q, k, v, m)[0]
        if self.kind == "flash_cpu":
            return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=torch.where(m, 0.0, -1e4))[0]
        if self.kind == "eager":
            logits = q @ k.transpose(-1, -2) / math.sqrt(D) + torch.where(m, 0.0, -1e4)
            return torch.softmax(logits, dim=-1) @ v
        raise AssertionError(self.kind)


def _explicit(kind, q, k, v, m, bias):
    """The same attention with the bias added to an explicit additive mask."""
    b = bias[:, 0, :, None, :]  # [B, H, 1, T]
    lowest = torch.finfo(torch.float32).min
    if kind == "bool":
        mask = torch.where(m, 0.0, lowest) + b
    elif kind == "math":  # the private overload adds a bool mask as 0/1 values
        mask = m.float() + b
    elif kind in ("float", "flash_cpu", "eager"):
        mask = torch.where(m, 0.0, -1e4) + b
    elif kind == "none":
        mask = b.expand(B, H, S, T)
    elif kind == "is_causal":
        mask = torch.where(torch.ones(S, T, dtype=torch.bool).tril(), 0.0, lowest) + b
    elif kind == "gqa":
        return F.scaled_dot_product_attention(q, k[:, :2].repeat_interleave(2, 1), v[:, :2].repeat_interleave(2, 1), attn_mask=torch.where(m, 0.0, lowest) + b)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("kind", ["bool", "float", "none", "is_causal", "gqa", "math", "flash_cpu", "eager"])
def test_overload_and_mask_kind_parity(kind):
    q, k, v = _qkv()
    m = _bool_mask()
    ep = torch.export.export(_Site(kind), (q, k, v, m))
    report = insert_steering_bias(ep.graph_module, SteeringBiasSettings(num_layers=1, num_heads=H))
    assert len(report.sites) == 1
    run = run_program(rebuild_program(ep))
    bias = torch.randn(B, 1, H, T, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(run(q, k, v, m, torch.zeros_like(bias)), _Site(kind)(q, k, v, m), atol=1e-5, rtol=0)
        got = run(q, k, v, m, bias)
    torch.testing.assert_close(got, _explicit(kind, q, k, v, m, bias), atol=1e-5, rtol=0)
    assert (got - _Site(kind)(q, k, v, m)).abs().max() > 1e-2


@pytest.mark.parametrize("op", ["efficient", "cudnn"])
def test_gpu_only_overloads_are_rewritten(op):
    """CUDA-only kernels cannot run here; the rewrite is checked structurally on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    class M(torch.nn.Module):
        def forward(self, q, k, v, m):
            bias = torch.where(m, 0.0, -1e4).expand(B, H, S, T)
            if op == "efficient":
                return aten._scaled_dot_product_efficient_attention(q, k, v, bias, False)[0]
            return aten._scaled_dot_product_cudnn_attention(q, k, v, bias, False)[0]

    with FakeTensorMode(allow_non_fake_inputs=True):
        args = (*_qkv(), _bool_mask())
        ep = torch.export.export(M(), args)
    report = insert_steering_bias(ep.graph_module, SteeringBiasSettings(num_layers=1, num_heads=H))
    assert [s.mask for s in report.sites] == ["float"]
    node = next(n for n in ep.graph_module.graph.nodes if "steerc_steered" in n.meta)
    assert get_arg(node, "attn_bias").target == aten.add.Tensor


def test_mask_free_flash_overload_is_refused():
    from torch._subclasses.fake_tensor import FakeTensorMode

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return aten._scaled_dot_product_flash_attention(q, k, v)[0]

    with FakeTensorMode(allow_non_fake_inputs=True):
        ep = torch.export.export(M(), tuple(_qkv()))
    with pytest.raises(PassError, match="takes no mask"):
        insert_steering_bias(ep.graph_module, SteeringBiasSettings(num_layers=1, num_heads=H))


def test_capture_of_fp16_model_casts_bias():
    model = tiny_model("llama").to(torch.float16)
    sp = capture_steerable(model, CompileSettings(max_seq_len=64, dtype="fp16"))
    casts = [n for n in sp.program.graph_module.graph.nodes if n.target == aten._to_copy.default and n.kwargs.get("dtype") == torch.float16]
    assert len(casts) >= sp.geometry.num_layers
