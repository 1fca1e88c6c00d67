"""Pass: give every attention site an additive steering bias over key positions.

Adds one graph input ``steer_bias [B, L, H, P+S]`` (float32; L layers, H query heads,
P+S key positions). Site ``l`` receives ``steer_bias[:, l, :, None, :]``, i.e.
``[B, H, 1, P+S]``: the same bias for every query row, so the one graph serves prefill
(S rows over P+S keys, P = 0 for a fresh context) and decode (S = 1) alike.

Rewrites, per site kind (the bias is cast to the site's dtype first):

* SDPA, bool mask ``m``      -> ``attn_mask = where(m, bias, finfo.min)`` (public op: True = attend)
* SDPA, float mask ``m``     -> ``attn_mask = m + bias`` (private overloads add any mask they
  get, a bool one as 0/1, so theirs is rewritten this way too)
* SDPA, no mask              -> ``attn_mask = bias``
* SDPA, ``is_causal=True``   -> ``attn_mask = where(tril(ones(S, P+S)), bias, finfo.min)``, ``is_causal=False``
  (the same top-left alignment SDPA itself uses)
* eager ``softmax(x)``       -> ``softmax(x + bias)``

so each site's causal, padding and steering masks become one additive mask, which keeps
fused kernels (ONNX ``Attention``, SDPA) usable. Masked positions get ``finfo.min`` rather
than ``-inf`` so a fully masked row (a left-padding query) gives finite garbage instead of
NaN that would spread through the KV cache. GQA is unaffected: the bias is per query head.

Applying the pass to a graph that already has the input raises :class:`PassError` (the
pass is not idempotent by design: silently doing nothing would hide a pipeline bug).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from steerc.errors import PassError
from steerc.passes.graph_ops import call as _call
from steerc.passes.graph_ops import fake_mode as _fake_mode
from steerc.passes.attention_sites import SDPA_MASK_ARGS, AttentionSite, find_attention_sites, get_arg, set_arg
from steerc.passes.report import PassReport, SiteReport
from steerc.settings_base import JsonDataclass, check_int

__all__ = ["SteeringBiasSettings", "insert_steering_bias"]

aten = torch.ops.aten


@dataclass(frozen=True)
class SteeringBiasSettings(JsonDataclass):
    num_layers: int
    num_heads: int
    architecture: str = "model"
    input_name: str = "steer_bias"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads"):
            check_int(name, getattr(self, name), 1)
        if not self.input_name.isidentifier():
            raise ValueError(f"input_name must be a Python identifier, got {self.input_name!r}")

    @classmethod
    def for_model(cls, geometry, architecture: str, attn_implementation: str = "sdpa") -> "SteeringBiasSettings":
        return cls(num_layers=geometry.num_layers, num_heads=geometry.num_heads, architecture=architecture)


def _layer_bias(graph: fx.Graph, bias: fx.Node, layer: int, dtype: torch.dtype, heads: int, rows: fx.Node, cols: fx.Node) -> fx.Node:
    """``steer_bias[:, layer]`` as ``[B, H, S, P+S]`` in ``dtype``.

    The query-row axis is expanded explicitly from size 1 to S (taken from the query) rather
    than left to broadcasting: broadcasting a symbolic S against a literal 1 makes export
    assume S != 1, which would forbid decode (S = 1) in the re-exported graph."""
    batch = _call(graph, aten.sym_size.int, bias, 0)  # B
    out = _call(graph, aten.select.int, bias, 1, layer)  # [B, H, P+S]
    out = _call(graph, aten.unsqueeze.default, out, 2)  # [B, H, 1, P+S]
    out = _call(graph, aten.expand.default, out, [batch, heads, rows, cols])  # [B, H, S, P+S]
    if dtype != torch.float32:
        out = _call(graph, aten._to_copy.default, out, dtype=dtype)
    return out


def _rewrite_sdpa(graph: fx.Graph, site: AttentionSite, bias: fx.Node) -> None:
    node = site.node
    mask_name, causal_name = SDPA_MASK_ARGS[node.target]
    query, key = node.args[0], node.args[1]
    dtype = query.meta["val"].dtype
    lowest = torch.finfo(dtype).min
    mask = get_arg(node, mask_name)
    mask_dtype = mask.meta["val"].dtype if site.mask == "float" and mask.meta["val"].dtype.is_floating_point else dtype
    rows = _call(graph, aten.sym_size.int, query, 2)  # S
    cols = _call(graph, aten.sym_size.int, key, 2)  # P+S
    layer_bias = _layer_bias(graph, bias, site.layer, mask_dtype, site.heads, rows, cols)  # [B, H, S, P+S]
    if site.mask == "float":
        merged = _call(graph, aten.add.Tensor, mask, layer_bias)
    elif site.mask == "bool":
        merged = _call(graph, aten.where.ScalarOther, mask, layer_bias, lowest)
    elif site.mask == "is_causal":
        ones = _call(graph, aten.ones.default, [rows, cols], dtype=torch.bool, device=query.meta["val"].device)
        keep = _call(graph, aten.tril.default, ones)  # [S, P+S]
        merged = _call(graph, aten.where.ScalarOther, keep, layer_bias, lowest)
    else:  # no mask
        merged = layer_bias
    set_arg(node, mask_name, merged)
    set_arg(node, causal_name, False)


def _rewrite_softmax(graph: fx.Graph, site: AttentionSite, bias: fx.Node) -> None:
    """Eager pattern: the softmax input is ``[B, H, S, P+S]`` logits (scaled QK^T + mask)."""
    node = site.node
    logits = node.args[0]
    rows = _call(graph, aten.sym_size.int, logits, 2)  # S
    cols = _call(graph, aten.sym_size.int, logits, 3)  # P+S
    layer_bias = _layer_bias(graph, bias, site.layer, logits.meta["val"].dtype, site.heads, rows, cols)
    node.args = (_call(graph, aten.add.Tensor, logits, layer_bias), *node.args[1:])


def _key_val(site: AttentionSite):
    """Fake value shaped ``[..., P+S, *]`` for the site's keys (for softmax: the logits transposed)."""
    if site.kind == "sdpa":
        return site.node.args[1].meta["val"]
    return site.node.args[0].meta["val"].transpose(-1, -2)


def insert_steering_bias(gm: fx.GraphModule, settings: SteeringBiasSettings) -> PassReport:
    """Add the ``steer_bias`` input and feed it to every attention site (see module doc)."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if any(p.target == settings.input_name for p in placeholders):
        raise PassError(f"{settings.architecture}: the graph already has input '{settings.input_name}': insert_steering_bias was applied twice")
    if not placeholders:
        raise PassError(f"{settings.architecture}: graph has no inputs; expected a captured decoder-step graph (steerc.capture.capture_decoder_step)")
    sites = find_attention_sites(gm, settings.architecture)
    if not sites:
        raise PassError(
            f"{settings.architecture}: no attention site found (no SDPA node, no eager softmax feeding a matmul); "
            "this architecture's attention is not supported"
        )
    covered = {s.layer for s in sites}
    missing = sorted(set(range(settings.num_layers)) - covered)
    extra = sorted(covered - set(range(settings.num_layers)))
    if missing or extra or len(sites) < settings.num_layers:
        raise PassError(
            f"{settings.architecture}: found {len(sites)} attention site(s) on layers {sorted(covered)} for {settings.num_layers} layers "
            f"(missing {missing}, unexpected {extra}); some attention runs outside the matched patterns"
        )
    for site in sites:
        if site.heads != settings.num_heads:
            raise PassError(f"{settings.architecture}: attention site {site.node.name} has {site.heads} query heads, expected {settings.num_heads}")

    with graph.inserting_after(placeholders[-1]):
        bias = graph.placeholder(settings.input_name)  # [B, L, H, P+S]
    bias.meta["steerc_input"] = True
    query_val, key_val = sites[0].node.args[0].meta["val"], _key_val(sites[0])
    fake_mode = _fake_mode(graph)
    if fake_mode is not None:
        with fake_mode:  # [B, L, H, P+S]: batch of the queries, length of the keys
            bias.meta["val"] = torch.empty(query_val.shape[0], settings.num_layers, settings.num_heads, key_val.shape[-2], dtype=torch.float32)
    for site in sites:
        with graph.inserting_before(site.node):
            (_rewrite_sdpa if site.kind == "sdpa" else _rewrite_softmax)(graph, site, bias)
        site.node.meta["steerc_steered"] = site.layer
    graph.lint()
    gm.recompile()
    reports = tuple(SiteReport(s.node.name, s.layer, s.kind, str(s.node.target), s.mask, s.heads) for s in sites)
    return PassReport(name="insert_steering_bias", sites=reports, inputs_added=(settings.input_name,), notes=(f"settings={settings.to_json()}",))


SteeringBiasSettings.__doc__ = "Settings of :func:`insert_steering_bias`: the bias covers ``num_layers`` x ``num_heads``."
insert_steering_bias.settings_type = SteeringBiasSettings
