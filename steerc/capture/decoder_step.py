"""The captured computation: one decoder step with explicit, flat KV tensors.

One graph serves prefill and decode. Prefill is past length P = 0 and S prompt tokens;
decode is S = 1 new token after P cached ones. ``attention_mask`` covers all P + S
positions, so left-padded batches work in both phases.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DecoderStep"]


class DecoderStep(nn.Module):
    """Wrap a HF causal LM as ``(ids, positions, mask, *past) -> (logits, *present)``.

    ``past`` is ``[k0, v0, k1, v1, ...]``, each ``[B, Hkv, P, D]``; ``present`` has the same
    layout with ``P + S`` positions. The HF cache is rebuilt from the flat tensors inside
    ``forward`` (a plain ``DynamicCache`` without config: every layer keeps all positions,
    so sliding-window models return full-length KV; their masks still apply the window).
    """

    def __init__(self, model: nn.Module, num_layers: int):
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(self, input_ids, position_ids, attention_mask, past_key_values: list[torch.Tensor]):
        from transformers import DynamicCache

        # past_key_values: 2L tensors, each [B, Hkv, P, D]
        cache = DynamicCache(ddp_cache_data=[(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(self.num_layers)])
        out = self.model(
            input_ids=input_ids,  # [B, S]
            position_ids=position_ids,  # [B, S]
            attention_mask=attention_mask,  # [B, P+S]
            past_key_values=cache,
            use_cache=True,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]  # [B, Hkv, P+S, D]
        return (out.logits, *present)  # logits [B, S, V]
