"""Find the attention sites of a captured graph.

A site is either a fused SDPA node (any ATen overload that takes a mask or bias) or the
softmax of the eager pattern ``matmul(q, k^T) -> (+mask) -> softmax -> matmul(., v)``.
Sites are matched by target set, their shapes read from ``node.meta["val"]``, and their
layer read from ``node.meta["nn_module_stack"]`` (the first integer component of the
innermost module path, e.g. ``model.layers.7.self_attn`` -> 7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import fx

from steerc.errors import PassError

__all__ = ["AttentionSite", "SDPA_MASK_ARGS", "SDPA_WITHOUT_MASK", "SOFTMAX_TARGETS", "find_attention_sites", "get_arg", "set_arg", "sites_by_layer"]

aten = torch.ops.aten

# SDPA overload -> (name of its mask/bias argument, name of its causal flag)
SDPA_MASK_ARGS = {
    aten.scaled_dot_product_attention.default: ("attn_mask", "is_causal"),
    aten._scaled_dot_product_attention_math.default: ("attn_mask", "is_causal"),
    aten._scaled_dot_product_attention_math_for_mps.default: ("attn_mask", "is_causal"),
    aten._scaled_dot_product_flash_attention_for_cpu.default: ("attn_mask", "is_causal"),
    aten._scaled_dot_product_efficient_attention.default: ("attn_bias", "is_causal"),
    aten._scaled_dot_product_cudnn_attention.default: ("attn_bias", "is_causal"),
    aten._scaled_dot_product_fused_attention_overrideable.default: ("attn_bias", "is_causal"),
}
# Overloads with no mask input: a bias cannot be added, the graph must be captured before decomposition.
SDPA_WITHOUT_MASK = {aten._scaled_dot_product_flash_attention.default, aten._scaled_dot_product_flash_attention.quantized}
SOFTMAX_TARGETS = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
_MATMUL_TARGETS = {aten.matmul.default, aten.bmm.default, aten.einsum.default, aten.mm.default}
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass(frozen=True)
class AttentionSite:
    node: fx.Node
    kind: str  # "sdpa" | "eager_softmax"
    layer: int
    mask: str  # "bool" | "float" | "none" | "is_causal" | "logits"
    heads: int


def _schema_index(node: fx.Node, name: str) -> int:
    return [a.name for a in node.target._schema.arguments].index(name)


def get_arg(node: fx.Node, name: str):
    """An argument of an OpOverload node by schema name, positional or keyword, or its default."""
    if name in node.kwargs:
        return node.kwargs[name]
    idx = _schema_index(node, name)
    if idx < len(node.args):
        return node.args[idx]
    default = node.target._schema.arguments[idx].default_value
    return default


def set_arg(node: fx.Node, name: str, value) -> None:
    idx = _schema_index(node, name)
    arg = node.target._schema.arguments[idx]
    if idx < len(node.args):
        args = list(node.args)
        args[idx] = value
        node.args = tuple(args)
    elif arg.kwarg_only or idx > len(node.args):
        node.kwargs = {**node.kwargs, name: value}
    else:
        node.args = (*node.args, value)


def layer_of(node: fx.Node) -> int | None:
    stack = node.meta.get("nn_module_stack") or {}
    for path, _type in reversed(list(stack.values())):
        match = _LAYER_RE.search(path)
        if match:
            return int(match.group(1))
    return None


def _feeds_matmul(node: fx.Node, depth: int = 6) -> bool:
    frontier = list(node.users)
    for _ in range(depth):
        nxt = []
        for user in frontier:
            if user.op != "call_function":
                continue
            if user.target in _MATMUL_TARGETS:
                return True
            nxt.extend(user.users)
        frontier = nxt
    return False


def _mask_kind(target, mask, causal) -> str:
    """Only the public op reads a bool mask as keep/drop; the private overloads add whatever
    mask they get (a bool one as 0/1), so theirs counts as "float"."""
    if causal is True:
        return "is_causal"
    if mask is None:
        return "none"
    if mask.meta["val"].dtype == torch.bool and target == aten.scaled_dot_product_attention.default:
        return "bool"
    return "float"


def find_attention_sites(gm: fx.GraphModule, architecture: str = "model") -> list[AttentionSite]:
    """All attention sites in graph order, with layer and mask kind; raises on an SDPA
    overload that has no mask input."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    sites: list[AttentionSite] = []
    unattributed = []
    for node in nodes:
        if node.target in SDPA_WITHOUT_MASK:
            raise PassError(
                f"{architecture}: attention node {node.name} is {node.target}, which takes no mask, so no steering bias can be added; "
                "capture the model before SDPA is decomposed into backend kernels"
            )
        if node.target in SDPA_MASK_ARGS:
            mask_name, causal_name = SDPA_MASK_ARGS[node.target]
            kind, heads = "sdpa", node.args[0].meta["val"].shape[1]
            mask = _mask_kind(node.target, get_arg(node, mask_name), get_arg(node, causal_name))
        elif node.target in SOFTMAX_TARGETS:
            val = node.meta.get("val")
            if val is None or val.dim() != 4 or node.args[1] not in (-1, 3) or not _feeds_matmul(node):
                continue
            kind, heads, mask = "eager_softmax", val.shape[1], "logits"
        else:
            continue
        layer = layer_of(node)
        if layer is None:
            unattributed.append(node)
        sites.append(AttentionSite(node, kind, -1 if layer is None else layer, mask, int(heads)))
    if unattributed:
        if len(unattributed) != len(sites):
            raise PassError(f"{architecture}: some attention sites carry no layer index ({[n.name for n in unattributed]}) and others do")
        # No module metadata at all (a hand-built graph): sites are layers in graph order.
        sites = [AttentionSite(s.node, s.kind, i, s.mask, s.heads) for i, s in enumerate(sites)]
    return sites


def sites_by_layer(gm: fx.GraphModule, num_layers: int, architecture: str = "model") -> tuple[dict[int, AttentionSite], dict[int, int]]:
    """``(site of each layer, shared layer -> its group's first layer)`` for passes that need one
    site per layer. After ``share_attention`` a shared layer has no site of its own (it uses its
    group's first layer's probabilities). Raises when a layer has two sites or the layers with a
    site plus the shared ones are not exactly ``0 .. num_layers - 1``."""
    by_layer: dict[int, AttentionSite] = {}
    for site in find_attention_sites(gm, architecture):
        if site.layer in by_layer:
            raise PassError(f"{architecture}: layer {site.layer} has two attention sites ({by_layer[site.layer].node.name}, {site.node.name})")
        by_layer[site.layer] = site
    shared = {int(m): g[0] for g in gm.meta.get("steerc_shared_attention", {}).get("groups", ()) for m in g[1:]}
    if sorted({*by_layer, *shared}) != list(range(num_layers)) or set(by_layer) & set(shared):
        raise PassError(f"{architecture}: attention sites cover layers {sorted(by_layer)}, expected 0..{num_layers - 1}"
                        + (f" (shared layers {sorted(shared)})" if shared else ""))
    return by_layer, shared
