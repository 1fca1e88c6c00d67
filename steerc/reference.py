"""Eager reference: the specification every rewrite is tested against.

:func:`reference_step` runs the *unmodified* HF model on a decoder step. With a steering
bias it switches the model to eager attention and adds ``bias[:, l, :, None, :]`` to the
explicit additive 4-D mask layer ``l``'s attention receives (``[B, 1, S, P+S]`` float
mask + ``[B, H, 1, P+S]`` bias), through forward pre-hooks on the attention modules. No
graph, no pass: just the model and the definition of steering.

:func:`reference_importance` is the definition of LLMSteer's importance: the eager model's
attention probabilities (``output_attentions``), steered the same way, summed over the
query rows that are real tokens.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["reference_step", "reference_importance", "attention_modules", "padded_positions"]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Per-layer self-attention modules, ordered by ``layer_idx``."""
    found = [m for m in model.modules() if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "layer_idx", None), int)]
    return sorted(found, key=lambda m: m.layer_idx)


def padded_positions(attention_mask: torch.Tensor, past: int = 0) -> torch.Tensor:
    """Position ids for a left-padded batch: count of real tokens before each one."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, past:]


@contextlib.contextmanager
def _attn_implementation(model, name: str):
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def _bias_hooks(model: nn.Module, steer_bias: torch.Tensor):
    modules = attention_modules(model)
    if len(modules) != steer_bias.shape[1]:
        raise ValueError(f"steer_bias has {steer_bias.shape[1]} layers, model has {len(modules)} attention modules")

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None or mask.dim() != 4:
                raise RuntimeError(f"layer {layer}: expected an explicit 4-D attention mask, got {None if mask is None else mask.shape}")
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
            bias = steer_bias[:, layer, :, None, :].to(mask.dtype)  # [B, H, 1, P+S]
            kwargs["attention_mask"] = mask + bias[..., : mask.shape[-1]]  # [B, H, S, P+S]
            return args, kwargs

        return hook

    handles = [m.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def reference_step(model, input_ids, position_ids, attention_mask, past_key_values: list[torch.Tensor], steer_bias: torch.Tensor | None = None):
    """``(logits [B,S,V], present [k0, v0, ...])`` of the unmodified model, optionally steered."""
    from transformers import DynamicCache

    layers = len(past_key_values) // 2
    cache = DynamicCache(ddp_cache_data=[(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(layers)])
    run = lambda: model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)  # noqa: E731
    if steer_bias is None:
        out = run()
    else:
        with _attn_implementation(model, "eager"), _bias_hooks(model, steer_bias):
            out = run()
    present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
    return out.logits, present


@torch.no_grad()
def reference_importance(model, input_ids, position_ids, attention_mask, past_key_values: list[torch.Tensor], steer_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, L, H, P+S]``: attention each key receives, summed over real query rows."""
    from transformers import DynamicCache

    layers = len(past_key_values) // 2
    cache = DynamicCache(ddp_cache_data=[(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(layers)])
    B, S = input_ids.shape
    heads = model.config.get_text_config(decoder=True).num_attention_heads
    bias = steer_bias if steer_bias is not None else torch.zeros(B, layers, heads, attention_mask.shape[1])
    with _attn_implementation(model, "eager"), _bias_hooks(model, bias):
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True, output_attentions=True)
    rows = attention_mask[:, -S:].float()[:, None, :, None]  # [B, 1, S, 1]
    return torch.stack([(a.float() * rows).sum(2) for a in out.attentions], 1)  # [B, L, H, P+S]
