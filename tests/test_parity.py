"""The rewritten program against the eager reference, per architecture, on untraced shapes.

Traced shape: batch 2, past 3, new 5. Checked: a fresh prefill (past 0), a decode step
(one new token), and a left-padded batch of 3, each with zero bias (must equal the
unmodified model) and with a random per-layer, per-head bias (must equal the unmodified
model run with that bias added to each layer's explicit additive 4-D mask).
"""

import pytest
import torch
from conftest import assert_step_close, step_inputs, steerable
from tiny_models import TINY_MODELS

from steerc.capture import run_program
from steerc.reference import reference_step

SHAPES = {  # (batch, past, new, left padding of row 0)
    "prefill": (1, 0, 7, 0),
    "decode": (2, 6, 1, 0),
    "padded-prefill": (3, 0, 6, 2),
    "padded-decode": (3, 5, 1, 2),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_zero_bias_equals_unmodified_model(arch, shape):
    model, sp = steerable(arch)
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(sp.geometry, B, P, S, pad)
    bias = torch.zeros(B, sp.geometry.num_layers, sp.geometry.num_heads, P + S)
    logits, *present = run_program(sp.program)(ids, pos, mask, kv, bias)
    assert_step_close((logits, present), reference_step(model, ids, pos, mask, kv), mask, S)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_bias_equals_explicit_additive_mask(arch, shape):
    model, sp = steerable(arch)
    g = sp.geometry
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad)
    bias = 2.0 * torch.randn(B, g.num_layers, g.num_heads, P + S, generator=torch.Generator().manual_seed(7))
    logits, *present = run_program(sp.program)(ids, pos, mask, kv, bias)
    ref = reference_step(model, ids, pos, mask, kv, bias)
    assert_step_close((logits, present), ref, mask, S)
    # The check has teeth: this bias changes the output well beyond the tolerance.
    plain = reference_step(model, ids, pos, mask, kv)[0]
    rows = mask[:, -S:].bool()
    assert (ref[0][rows] - plain[rows]).abs().max() > 1e-2


def test_reference_hooks_equal_hf_four_d_mask():
    """The reference's per-layer hook equals HF's own explicit 4-D mask for a layer-uniform bias."""
    model, sp = steerable("llama-eager")
    g = sp.geometry
    B, S = 2, 6
    ids, pos, mask, kv = step_inputs(g, B, 0, S)
    head_bias = torch.randn(B, 1, 1, S)  # same for every layer and head
    bias = head_bias.expand(B, g.num_layers, g.num_heads, S).clone()
    causal = torch.tril(torch.ones(S, S, dtype=torch.bool))
    mask4d = torch.where(causal, 0.0, torch.finfo(torch.float32).min)[None, None] + head_bias  # [B, 1, S, S]
    with torch.no_grad():
        hf = model(input_ids=ids, position_ids=pos, attention_mask=mask4d).logits
    ref = reference_step(model, ids, pos, mask, kv, bias)[0]
    torch.testing.assert_close(ref, hf, atol=1e-5, rtol=0)
