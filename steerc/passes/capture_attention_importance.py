"""Pass: also output, per key, the attention it receives (LLMSteer's cumulative attention).

Adds one graph output ``attn_importance [B, L, H, P+S]`` (float32): for layer ``l``, query
head ``h`` and key ``t``, the attention probability key ``t`` receives summed over the query
rows of this call that are real tokens (``attention_mask[:, -S:]``; left-padding rows count
0). The probabilities are those the model actually uses, so the steering bias, the causal,
padding and sliding-window masks and any logit soft-capping are all included.

Prefill and decode shapes are handled alike: a call with S new tokens after P cached ones
sums S rows over P+S keys, so a long context prefilled in chunks accumulates exactly by
adding each chunk's output (chunk ``c`` contributes to keys ``[0, end_c)``); memory is the
``[B, H, S, P+S]`` probabilities of one layer, bounded by the runtime's chunk size.

Per site kind:

* eager ``softmax``: its output already is the probabilities; they are summed.
* SDPA (fused, probabilities not exposed): the site is left as it is (its output, and so the
  logits and KV, are unchanged) and the probabilities are recomputed beside it from the same
  query, key, scale and merged mask: ``softmax(q k^T * scale + mask)`` in float32. With
  ``enable_gqa`` (grouped K/V), queries are viewed as ``[B, Hkv, H/Hkv, S, D]`` so query head
  ``h`` meets KV head ``h // (H/Hkv)``, the mapping SDPA uses.

After ``share_attention``, a shared layer (no site of its own) reports the column sums of
the probabilities it uses, its group's first layer's.

Run it after ``insert_steering_bias`` (it reads the merged masks); it raises on a graph
without that input, on a second application, and when a layer has no site.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import fx

from steerc.errors import PassError
from steerc.passes.attention_sites import SDPA_MASK_ARGS, AttentionSite, get_arg, sites_by_layer
from steerc.passes.graph_ops import call as _call
from steerc.passes.report import PassReport, SiteReport
from steerc.settings_base import JsonDataclass, check_int

__all__ = ["ImportanceSettings", "capture_attention_importance", "IMPORTANCE_OUTPUT"]

aten = torch.ops.aten
IMPORTANCE_OUTPUT = "attn_importance"


@dataclass(frozen=True)
class ImportanceSettings(JsonDataclass):
    num_layers: int
    num_heads: int
    architecture: str = "model"
    bias_input: str = "steer_bias"
    mask_input: str = "attention_mask"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads"):
            check_int(name, getattr(self, name), 1)
        for name in ("bias_input", "mask_input"):
            if not getattr(self, name).isidentifier():
                raise ValueError(f"{name} must be a Python identifier, got {getattr(self, name)!r}")

    @classmethod
    def for_model(cls, geometry, architecture: str, attn_implementation: str = "sdpa") -> "ImportanceSettings":
        return cls(num_layers=geometry.num_layers, num_heads=geometry.num_heads, architecture=architecture)


def _sdpa_probs(graph: fx.Graph, site: AttentionSite) -> fx.Node:
    """``softmax(q k^T * scale + mask)`` of an SDPA site as ``[B, H, S, P+S]`` float32."""
    node = site.node
    query, key = node.args[0], node.args[1]
    q_val, k_val = query.meta["val"], key.meta["val"]
    heads, kv_heads, head_dim = q_val.shape[1], k_val.shape[1], q_val.shape[-1]
    scale = get_arg(node, "scale")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    q = _call(graph, aten._to_copy.default, query, dtype=torch.float32)  # [B, H, S, D]
    k = _call(graph, aten._to_copy.default, key, dtype=torch.float32)  # [B, Hkv, P+S, D]
    k_t = _call(graph, aten.transpose.int, k, -1, -2)  # [B, Hkv, D, P+S]
    if kv_heads != heads:
        if heads % kv_heads:
            raise PassError(f"{node.name}: {heads} query heads are not a multiple of {kv_heads} KV heads")
        q = _call(graph, aten.unflatten.int, q, 1, [kv_heads, heads // kv_heads])  # [B, Hkv, G, S, D]
        k_t = _call(graph, aten.unsqueeze.default, k_t, 2)  # [B, Hkv, 1, D, P+S]
        scores = _call(graph, aten.matmul.default, q, k_t)  # [B, Hkv, G, S, P+S]
        scores = _call(graph, aten.flatten.using_ints, scores, 1, 2)  # [B, H, S, P+S]
    else:
        scores = _call(graph, aten.matmul.default, q, k_t)  # [B, H, S, P+S]
    scores = _call(graph, aten.mul.Tensor, scores, scale)
    mask_name, _ = SDPA_MASK_ARGS[node.target]
    mask = get_arg(node, mask_name)  # the merged causal + padding + steering mask (see insert_steering_bias)
    if mask is None:
        raise PassError(f"{node.name}: SDPA site has no mask; run insert_steering_bias first")
    mask = _call(graph, aten._to_copy.default, mask, dtype=torch.float32)
    scores = _call(graph, aten.add.Tensor, scores, mask)
    return _call(graph, aten._softmax.default, scores, -1, False)


def _column_sums(graph: fx.Graph, probs: fx.Node, row_weight: fx.Node) -> fx.Node:
    """``[B, H, S, P+S]`` probabilities, ``[B, 1, S, 1]`` row weights -> ``[B, H, P+S]``."""
    if probs.meta["val"].dtype != torch.float32:
        probs = _call(graph, aten._to_copy.default, probs, dtype=torch.float32)
    weighted = _call(graph, aten.mul.Tensor, probs, row_weight)
    return _call(graph, aten.sum.dim_IntList, weighted, [2])


def _query_rows(graph: fx.Graph, mask: fx.Node, probs: fx.Node) -> fx.Node:
    """``attention_mask[:, -S:]`` as float32 ``[B, 1, S, 1]`` (1 = real query row)."""
    rows = _call(graph, aten.sym_size.int, probs, 2)  # S
    cols = _call(graph, aten.sym_size.int, mask, 1)  # P+S
    start = _call(graph, operator.sub, cols, rows)  # P
    out = _call(graph, aten.slice.Tensor, mask, 1, start, cols)  # [B, S]
    out = _call(graph, aten._to_copy.default, out, dtype=torch.float32)
    out = _call(graph, aten.unsqueeze.default, out, 1)
    return _call(graph, aten.unsqueeze.default, out, 3)  # [B, 1, S, 1]


def capture_attention_importance(gm: fx.GraphModule, settings: ImportanceSettings) -> PassReport:
    """Add the ``attn_importance`` output (see module doc)."""
    graph = gm.graph
    placeholders = {n.target: n for n in graph.nodes if n.op == "placeholder"}
    if settings.bias_input not in placeholders:
        raise PassError(f"{settings.architecture}: the graph has no '{settings.bias_input}' input; run insert_steering_bias before capture_attention_importance")
    if settings.mask_input not in placeholders:
        raise PassError(f"{settings.architecture}: the graph has no '{settings.mask_input}' input to tell real query rows from padding")
    output = next(n for n in graph.nodes if n.op == "output")
    if any(n.meta.get("steerc_output") == IMPORTANCE_OUTPUT for n in output.args[0] if isinstance(n, fx.Node)):
        raise PassError(f"{settings.architecture}: the graph already outputs '{IMPORTANCE_OUTPUT}': capture_attention_importance was applied twice")
    # Shared attention (share_attention pass): a shared layer has no site of its own and uses
    # its group's first layer's probabilities, so it reports that layer's column sums.
    by_layer, shared = sites_by_layer(gm, settings.num_layers, settings.architecture)
    per_layer = []
    for layer in range(settings.num_layers):
        if layer in shared:
            per_layer.append(per_layer[shared[layer]])  # [B, H, P+S], the first layer's
            continue
        site = by_layer[layer]
        with graph.inserting_before(site.node.next):  # each new node goes after the previous one
            probs = site.node if site.kind == "eager_softmax" else _sdpa_probs(graph, site)  # [B, H, S, P+S]
            per_layer.append(_column_sums(graph, probs, _query_rows(graph, placeholders[settings.mask_input], probs)))  # [B, H, P+S]
    with graph.inserting_before(output):
        importance = _call(graph, aten.stack.default, per_layer, 1)  # [B, L, H, P+S]
    importance.meta["steerc_output"] = IMPORTANCE_OUTPUT
    output.args = ((*output.args[0], importance),)
    graph.lint()
    gm.recompile()
    reports = tuple(SiteReport(s.node.name, s.layer, s.kind, str(s.node.target), s.mask, s.heads) for s in (by_layer[i] for i in range(settings.num_layers) if i in by_layer))
    return PassReport(name="capture_attention_importance", sites=reports, outputs_added=(IMPORTANCE_OUTPUT,), notes=(f"settings={settings.to_json()}",))


ImportanceSettings.__doc__ = "Settings of :func:`capture_attention_importance`: the output covers ``num_layers`` x ``num_heads``."
capture_attention_importance.settings_type = ImportanceSettings
capture_attention_importance.supports_shared_attention = True  # see the module doc
