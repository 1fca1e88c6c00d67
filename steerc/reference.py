"""Eager reference: the specification every rewrite is tested against.

:func:`reference_step` runs the *unmodified* HF model on a decoder step. With a steering
bias it switches the model to eager attention and adds ``bias[:, l, :, None, :]`` to the
explicit additive 4-D mask layer ``l``'s attention receives (``[B, 1, S, P+S]`` float
mask + ``[B, H, 1, P+S]`` bias), through forward pre-hooks on the attention modules. No
graph, no pass: just the model and the definition of steering.

:func:`reference_importance` is the definition of LLMSteer's importance: the eager model's
attention probabilities (``output_attentions``), steered the same way, summed over the
query rows that are real tokens.

:func:`reference_shared_step` is the definition of Shared Attention (arXiv 2407.12866): the
unmodified model in eager attention, where the first layer of each group records its
attention probabilities (steered like :func:`reference_step`) and the later layers of the
group use them with their own values (``P_first @ V_own``) instead of their own attention.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["reference_step", "reference_shared_step", "reference_importance", "reference_queries", "attention_modules", "padded_positions"]


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
def reference_importance(model, input_ids, position_ids, attention_mask, past_key_values: list[torch.Tensor], steer_bias: torch.Tensor | None = None,
                         groups=()) -> torch.Tensor:
    """``[B, L, H, P+S]``: attention each key receives, summed over real query rows. With shared
    attention ``groups`` (``past_key_values`` then in the shared layout, see
    :func:`reference_shared_step`) a shared layer reports the probabilities it uses, its
    group's first layer's."""
    groups = tuple(tuple(g) for g in groups)
    layers = len(attention_modules(model))
    cache = _cache(past_key_values, layers, {l for g in groups for l in g[1:]})
    B, S = input_ids.shape
    heads = model.config.get_text_config(decoder=True).num_attention_heads
    bias = steer_bias if steer_bias is not None else torch.zeros(B, layers, heads, attention_mask.shape[1])
    sharing = _shared_attention(model, groups) if groups else contextlib.nullcontext()
    with _attn_implementation(model, "eager"), _bias_hooks(model, bias), sharing:
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True, output_attentions=True)
    rows = attention_mask[:, -S:].float()[:, None, :, None]  # [B, 1, S, 1]
    return torch.stack([(a.float() * rows).sum(2) for a in out.attentions], 1)  # [B, L, H, P+S]


def _cache(past_key_values: list[torch.Tensor], layers: int, shared: set[int]):
    """A DynamicCache from flat ``[k0, v0, ...]`` tensors in the layout without the keys of
    ``shared`` layers (zeros stand in for them: the model computes them, nothing reads them)."""
    from transformers import DynamicCache

    past, it = [], iter(past_key_values)
    try:
        for i in range(layers):
            key = None if i in shared else next(it)
            value = next(it)
            past.append((torch.zeros_like(value) if key is None else key, value))
    except StopIteration:
        raise ValueError(f"past_key_values has {len(past_key_values)} tensors, expected {2 * layers - len(shared)} ({layers} layers, {len(shared)} without keys)") from None
    if next(it, None) is not None:
        raise ValueError(f"past_key_values has {len(past_key_values)} tensors, expected {2 * layers - len(shared)} ({layers} layers, {len(shared)} without keys)")
    return DynamicCache(ddp_cache_data=past)

@contextlib.contextmanager
def _shared_attention(model: nn.Module, groups):
    """Eager attention where each group's later layers use the first layer's probabilities.

    The model's own eager attention function (its modeling module's ``eager_attention_forward``,
    so softcapping and the like are kept) runs on every unshared layer; it is swapped in for
    the ``eager`` entry of transformers' ``AttentionInterface`` while the context is open."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    source = {l: g[0] for g in groups for l in g[1:]}
    firsts = {g[0] for g in groups}
    probs: dict[int, torch.Tensor] = {}

    def attention(module, query, key, value, attention_mask, **kwargs):
        layer = module.layer_idx
        if layer in source:
            p = probs[source[layer]]  # [B, H, S, P+S]
            heads, kv_heads = p.shape[1], value.shape[1]
            v = value.repeat_interleave(heads // kv_heads, dim=1) if kv_heads != heads else value  # [B, H, P+S, D]: head h reads h // (H/Hkv)
            out = torch.matmul(p.to(v.dtype), v).transpose(1, 2).contiguous()  # [B, S, H, D]
            return out, p
        own = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
        out, weights = own(module, query, key, value, attention_mask, **kwargs)
        if layer in firsts:
            probs[layer] = weights
        return out, weights

    had = "eager" in ALL_ATTENTION_FUNCTIONS._local_mapping
    previous = ALL_ATTENTION_FUNCTIONS._local_mapping.get("eager")
    ALL_ATTENTION_FUNCTIONS["eager"] = attention
    try:
        yield
    finally:
        if had:
            ALL_ATTENTION_FUNCTIONS["eager"] = previous
        else:
            del ALL_ATTENTION_FUNCTIONS["eager"]


@torch.no_grad()
def reference_shared_step(model, input_ids, position_ids, attention_mask, past_key_values: list[torch.Tensor], groups, steer_bias: torch.Tensor | None = None):
    """``(logits [B,S,V], present)`` of the unmodified model with Shared Attention over ``groups``
    (e.g. ``((1, 2, 3),)``), optionally steered (``steer_bias [B, L, H, P+S]``; a shared layer's
    own row has no effect, its group's attention is the first layer's).

    ``past_key_values`` and ``present`` are in the shared engine's layout: per layer ``k, v``,
    without the key of a shared layer (``[k0, v0, v1, ...]``), each ``[B, Hkv, P, D]``. The
    model still computes keys for shared layers internally (fed zeros as their past); they
    are not used and not returned."""
    groups = tuple(tuple(g) for g in groups)
    shared = {l for g in groups for l in g[1:]}
    layers = len(attention_modules(model))
    cache = _cache(past_key_values, layers, shared)
    B = input_ids.shape[0]
    heads = model.config.get_text_config(decoder=True).num_attention_heads
    bias = steer_bias if steer_bias is not None else torch.zeros(B, layers, heads, attention_mask.shape[1])
    with _attn_implementation(model, "eager"), _bias_hooks(model, bias), _shared_attention(model, groups):
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    present = [t for i, layer in enumerate(out.past_key_values.layers) for t in ((layer.values,) if i in shared else (layer.keys, layer.values))]
    return out.logits, present


@torch.no_grad()
def reference_queries(model, input_ids, position_ids, attention_mask, past_key_values: list[torch.Tensor]) -> torch.Tensor:
    """``[B, L, H, D]``: each layer's query vectors (after rotary, before the ``1/sqrt(D)``
    scale), summed over the call's real query rows: what Q-LLM scores cached blocks with.

    The queries are read where attention receives them: a registered transformers attention
    function records its ``query`` argument and hands over to the model's own eager attention."""
    import sys

    from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache
    from transformers.masking_utils import eager_mask

    seen: dict[int, torch.Tensor] = {}

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen[module.layer_idx] = query.detach().float()  # [B, H, S, D]
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("steerc_reference_queries", recording)
    AttentionMaskInterface.register("steerc_reference_queries", eager_mask)
    layers = len(past_key_values) // 2
    cache = DynamicCache(ddp_cache_data=[(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(layers)])
    with _attn_implementation(model, "steerc_reference_queries"):
        model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    S = input_ids.shape[1]
    rows = attention_mask[:, -S:].float()[:, None, :, None]  # [B, 1, S, 1]
    return torch.stack([(seen[i] * rows).sum(2) for i in range(layers)], 1)  # [B, L, H, D]
