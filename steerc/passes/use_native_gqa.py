"""Pass: let fused attention read grouped K/V directly instead of copies repeated per head.

HF's SDPA integration repeats K/V to every query head on CPU when a mask is given
(``repeat_kv``: ``unsqueeze(kv, 2) -> expand [B, Hkv, n_rep, T, D] -> reshape [B, H, T, D]``),
which copies the whole cache ``n_rep`` times per layer per step. This pass feeds the
un-repeated ``[B, Hkv, T, D]`` tensors to the SDPA node with ``enable_gqa=True``; SDPA and
ONNX ``Attention`` then map query head ``h`` to KV head ``h // n_rep``, the same mapping
``repeat_kv`` builds, so results are unchanged. Prefill and decode shapes are handled alike
(only the head axis is touched). Sites whose K and V do not both match are left alone and
listed in the report; a graph with no matching site raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from steerc.errors import PassError
from steerc.passes.attention_sites import get_arg, set_arg
from steerc.passes.report import PassReport, SiteReport
from steerc.settings_base import JsonDataclass, check_int

__all__ = ["NativeGqaSettings", "use_native_gqa"]

aten = torch.ops.aten
_GQA_SDPA = {aten.scaled_dot_product_attention.default}  # overloads with an enable_gqa flag that export keeps fused
_RESHAPES = {aten.reshape.default, aten.view.default, aten._unsafe_view.default}


@dataclass(frozen=True)
class NativeGqaSettings(JsonDataclass):
    num_heads: int
    num_kv_heads: int
    architecture: str = "model"

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_kv_heads"):
            check_int(name, getattr(self, name), 1)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @classmethod
    def for_model(cls, geometry, architecture: str, attn_implementation: str = "sdpa") -> "NativeGqaSettings | None":
        """None (pass skipped) for multi-head models and for eager attention, which has no fused site."""
        if geometry.num_kv_heads == geometry.num_heads or attn_implementation != "sdpa":
            return None
        return cls(num_heads=geometry.num_heads, num_kv_heads=geometry.num_kv_heads, architecture=architecture)


def _unrepeated(node: fx.Node, settings: NativeGqaSettings) -> fx.Node | None:
    """The ``[B, Hkv, T, D]`` source of a ``repeat_kv`` chain ending at ``node``, else None."""
    if node.op != "call_function" or node.target not in _RESHAPES:
        return None
    expand = node.args[0]
    if expand.op != "call_function" or expand.target != aten.expand.default:
        return None
    unsqueeze = expand.args[0]
    if unsqueeze.op != "call_function" or unsqueeze.target != aten.unsqueeze.default or unsqueeze.args[1] != 2:
        return None
    source = unsqueeze.args[0]
    n_rep = settings.num_heads // settings.num_kv_heads
    src_shape, out_shape = source.meta["val"].shape, node.meta["val"].shape
    if src_shape[1] != settings.num_kv_heads or out_shape[1] != settings.num_heads or expand.meta["val"].shape[2] != n_rep:
        return None
    return source


def _move_size_queries(repeated: fx.Node, source: fx.Node) -> None:
    """Size queries of the repeated tensor on any axis but heads (batch, length, head dim are
    the same) now read the source, so the repeat chain becomes dead (else ONNX would still
    materialise it just to take its shape)."""
    for user in list(repeated.users):
        if user.op == "call_function" and user.target == aten.sym_size.int and user.args[1] not in (1, -3):
            user.replace_input_with(repeated, source)


def use_native_gqa(gm: fx.GraphModule, settings: NativeGqaSettings) -> PassReport:
    graph = gm.graph
    rewritten, skipped = [], []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _GQA_SDPA:
            continue
        if get_arg(node, "enable_gqa"):
            skipped.append(f"{node.name}: already enable_gqa")
            continue
        key, value = _unrepeated(node.args[1], settings), _unrepeated(node.args[2], settings)
        if key is None or value is None:
            skipped.append(f"{node.name}: K/V are not a repeat_kv chain")
            continue
        for repeated, source in ((node.args[1], key), (node.args[2], value)):
            _move_size_queries(repeated, source)
        node.args = (node.args[0], key, value, *node.args[3:])
        set_arg(node, "enable_gqa", True)
        layer = node.meta.get("steerc_steered", -1)
        rewritten.append(SiteReport(node.name, layer, "sdpa", str(node.target), "gqa", settings.num_heads))
    if not rewritten:
        raise PassError(f"{settings.architecture}: use_native_gqa found no SDPA site fed by repeated K/V ({len(skipped)} site(s) checked: {skipped[:3]})")
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return PassReport(name="use_native_gqa", sites=tuple(rewritten), notes=tuple(skipped))


use_native_gqa.settings_type = NativeGqaSettings
