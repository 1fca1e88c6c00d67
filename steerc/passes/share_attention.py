"""Pass: Shared Attention (arXiv 2407.12866): later layers reuse one layer's attention weights.

Attention probabilities are nearly identical across groups of later layers. For each group
of contiguous layers ``(f, f+1, ..., g)``:

* the first layer ``f`` computes its probabilities ``P_f = softmax(q k^T * scale + mask)``
  with its full merged mask (causal + padding + window + its own ``steer_bias`` row, as
  ``insert_steering_bias`` merged it) and its output as ``P_f @ V_f``. An SDPA site is
  replaced by that explicit computation (``[B, H, S, P+S]`` scores in the site's dtype,
  softmax in float32, ``P`` cast back; GQA: query head ``h`` meets KV head ``h // (H/Hkv)``);
  an eager site already has ``P_f`` (its softmax) and is left as it is.
* every other layer ``l`` of the group computes ``P_f @ V_l`` (``V_l`` GQA-grouped the same
  way): its own Q and K projections, rotary on q/k, mask, steering-bias row and key-cache
  concat become dead and are removed (dead-code elimination of side-effect-free nodes, plus
  the trace-time ``_assert_tensor_metadata`` checks of values that are no longer computed).
  Its key cache leaves the graph: the ``past_key_values.{l}.key`` input and the
  ``present.{l}.key`` output are removed (:func:`steerc.capture.rebuild_program` drops them
  from the program's signature). Its ``steer_bias`` row has no effect any more: the group's
  attention, steering included, is the first layer's.

Prefill (P = 0, S new tokens) and decode (S = 1) are handled alike: every tensor keeps its
symbolic ``[B, H, S, P+S]`` / ``[B, Hkv, P+S, D]`` shape and all layers see the same ``P+S``
keys, so ``P_f`` fits every layer of the group.

Run it after ``insert_steering_bias`` (it needs the merged masks) and ``use_native_gqa``.
It records the groups in ``gm.meta["steerc_shared_attention"]`` so that
``capture_attention_importance`` reports, for a shared layer, the probabilities it uses (the
first layer's). It raises :class:`PassError` on a graph without the steering input, on a
second application, on an attention site it cannot rewrite, and when a layer's sites or
key cache do not match the captured decoder-step layout.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import fx

from steerc.errors import PassError
from steerc.passes.attention_sites import SDPA_MASK_ARGS, AttentionSite, find_attention_sites, get_arg
from steerc.passes.graph_ops import call as _call
from steerc.passes.report import PassReport, SiteReport
from steerc.settings import check_layer_groups
from steerc.settings_base import JsonDataclass, check_int

__all__ = ["ShareAttentionSettings", "share_attention", "parse_share_groups", "format_share_groups", "SHARED_META"]

aten = torch.ops.aten
SHARED_META = "steerc_shared_attention"  # gm.meta key: {"groups": [[f, ..., g], ...]}
_SDPA = aten.scaled_dot_product_attention.default
_GROUP_RE = re.compile(r"^(\d+)-(\d+)$")
_PAST_RE = re.compile(r"^past_key_values_(\d+)$")  # DecoderStep's flat past list: [k0, v0, k1, v1, ...]


def parse_share_groups(text: str) -> tuple[tuple[int, ...], ...]:
    """CLI syntax -> groups: ``"20-29"`` is one group (layers 20..29), ``"20-24,25-29"`` two.
    Raises ValueError with the expected syntax on anything else (the layer range against a
    model is checked later, by :class:`ShareAttentionSettings`)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("--share-attention needs layer ranges like 20-29 or 20-24,25-29")
    groups = []
    for part in text.split(","):
        match = _GROUP_RE.match(part.strip())
        if not match:
            raise ValueError(f"--share-attention: {part.strip()!r} is not a layer range FIRST-LAST (e.g. 20-29; groups separated by commas: 20-24,25-29)")
        first, last = int(match.group(1)), int(match.group(2))
        if last <= first:
            raise ValueError(f"--share-attention: {first}-{last} must name at least two layers, first < last (e.g. {first}-{first + 1})")
        groups.append(tuple(range(first, last + 1)))
    return check_layer_groups(groups)


def format_share_groups(groups) -> str:
    """Groups -> CLI syntax (inverse of :func:`parse_share_groups`)."""
    return ",".join(f"{g[0]}-{g[-1]}" for g in groups)


@dataclass(frozen=True)
class ShareAttentionSettings(JsonDataclass):
    groups: tuple[tuple[int, ...], ...]
    num_layers: int
    num_heads: int
    num_kv_heads: int
    architecture: str = "model"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "num_kv_heads"):
            check_int(name, getattr(self, name), 1)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        groups = check_layer_groups(self.groups, self.num_layers)
        if not groups:
            raise ValueError("share_attention needs at least one group of layers")
        object.__setattr__(self, "groups", groups)

    @classmethod
    def for_model(cls, geometry, architecture: str, attn_implementation: str = "sdpa", groups=()) -> "ShareAttentionSettings | None":
        """None (pass skipped) without groups; raises ValueError for groups outside the model."""
        if not groups:
            return None
        return cls(groups=tuple(tuple(g) for g in groups), num_layers=geometry.num_layers, num_heads=geometry.num_heads,
                   num_kv_heads=geometry.num_kv_heads, architecture=architecture)

    @property
    def shared_layers(self) -> tuple[int, ...]:
        """Layers that reuse another layer's probabilities (every layer of a group but its first)."""
        return tuple(l for g in self.groups for l in g[1:])

    @property
    def source(self) -> dict[int, int]:
        """Shared layer -> the first layer of its group."""
        return {l: g[0] for g in self.groups for l in g[1:]}


def _with_stack(node: fx.Node, site: fx.Node) -> fx.Node:
    """New nodes belong to the site's module (so their layer is found, e.g. by find_attention_sites)."""
    for key in ("nn_module_stack", "stack_trace"):
        if key in site.meta:
            node.meta[key] = site.meta[key]
    return node


def _grouped(graph: fx.Graph, probs: fx.Node, value: fx.Node, site: fx.Node) -> fx.Node:
    """``probs [B, H, S, T] @ value [B, Hv, T, D]`` -> ``[B, H, S, D]``; with ``Hv < H`` (grouped
    K/V) query head ``h`` reads value head ``h // (H/Hv)``."""
    heads, v_heads = probs.meta["val"].shape[1], value.meta["val"].shape[1]
    if v_heads == heads:
        return _with_stack(_call(graph, aten.matmul.default, probs, value), site)  # [B, H, S, D]
    if heads % v_heads:
        raise PassError(f"{site.name}: {heads} query heads are not a multiple of {v_heads} value heads")
    p = _with_stack(_call(graph, aten.unflatten.int, probs, 1, [v_heads, heads // v_heads]), site)  # [B, Hkv, G, S, T]
    v = _with_stack(_call(graph, aten.unsqueeze.default, value, 2), site)  # [B, Hkv, 1, T, D]
    out = _with_stack(_call(graph, aten.matmul.default, p, v), site)  # [B, Hkv, G, S, D]
    return _with_stack(_call(graph, aten.flatten.using_ints, out, 1, 2), site)  # [B, H, S, D]


def _check_sdpa(site: AttentionSite) -> None:
    node = site.node
    if node.target != _SDPA:
        raise PassError(f"{node.name}: share_attention rewrites aten.scaled_dot_product_attention sites only, found {node.target}")
    if get_arg(node, "dropout_p") not in (0, 0.0):
        raise PassError(f"{node.name}: SDPA site has dropout; capture the model in eval mode")
    mask_name, _ = SDPA_MASK_ARGS[node.target]
    if get_arg(node, mask_name) is None or get_arg(node, "is_causal"):
        raise PassError(f"{node.name}: SDPA site has no merged mask; run insert_steering_bias before share_attention")


def _sdpa_probs(graph: fx.Graph, site: AttentionSite) -> fx.Node:
    """``softmax(q k^T * scale + merged_mask)`` of an SDPA site as ``[B, H, S, P+S]`` in the site's dtype."""
    node = site.node
    query, key = node.args[0], node.args[1]
    q_val, k_val = query.meta["val"], key.meta["val"]
    dtype, heads, kv_heads, head_dim = q_val.dtype, q_val.shape[1], k_val.shape[1], q_val.shape[-1]
    scale = get_arg(node, "scale")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    k_t = _with_stack(_call(graph, aten.transpose.int, key, -1, -2), node)  # [B, Hkv, D, P+S]
    if kv_heads != heads:
        if heads % kv_heads:
            raise PassError(f"{node.name}: {heads} query heads are not a multiple of {kv_heads} KV heads")
        q = _with_stack(_call(graph, aten.unflatten.int, query, 1, [kv_heads, heads // kv_heads]), node)  # [B, Hkv, G, S, D]
        k_t = _with_stack(_call(graph, aten.unsqueeze.default, k_t, 2), node)  # [B, Hkv, 1, D, P+S]
        scores = _with_stack(_call(graph, aten.matmul.default, q, k_t), node)  # [B, Hkv, G, S, P+S]
        scores = _with_stack(_call(graph, aten.flatten.using_ints, scores, 1, 2), node)  # [B, H, S, P+S]
    else:
        scores = _with_stack(_call(graph, aten.matmul.default, query, k_t), node)  # [B, H, S, P+S]
    scores = _with_stack(_call(graph, aten.mul.Tensor, scores, scale), node)
    mask_name, _ = SDPA_MASK_ARGS[node.target]
    mask = get_arg(node, mask_name)  # the merged causal + padding + steering mask, [B, 1|H, S, P+S]
    if mask.meta["val"].dtype == torch.bool:  # not produced by insert_steering_bias, but keep SDPA's meaning
        mask = _with_stack(_call(graph, aten.where.ScalarOther, mask, 0.0, torch.finfo(dtype).min), node)
    elif mask.meta["val"].dtype != dtype:
        mask = _with_stack(_call(graph, aten._to_copy.default, mask, dtype=dtype), node)
    scores = _with_stack(_call(graph, aten.add.Tensor, scores, mask), node)  # [B, H, S, P+S]
    if dtype != torch.float32:  # softmax in float32 as HF's eager attention does, P in the site's dtype
        scores = _with_stack(_call(graph, aten._to_copy.default, scores, dtype=torch.float32), node)
    probs = _with_stack(_call(graph, aten._softmax.default, scores, -1, False), node)  # [B, H, S, P+S]
    if dtype != torch.float32:
        probs = _with_stack(_call(graph, aten._to_copy.default, probs, dtype=dtype), node)
    return probs


def _replace(node: fx.Node, new: fx.Node) -> None:
    if node.meta["val"].shape != new.meta["val"].shape or node.meta["val"].dtype != new.meta["val"].dtype:
        raise PassError(f"{node.name}: the shared computation has shape {tuple(new.meta['val'].shape)} {new.meta['val'].dtype}, "
                        f"the site had {tuple(node.meta['val'].shape)} {node.meta['val'].dtype}")
    for key in ("steerc_steered",):
        if key in node.meta:
            new.meta[key] = node.meta[key]
    node.replace_all_uses_with(new)
    # SDPA carries the nondeterministic (dropout) tag, so dead-code elimination keeps it; with
    # dropout_p = 0 (checked) it has no side effect: erase it here.
    node.graph.erase_node(node)


def _eliminate_dead_code(graph: fx.Graph) -> int:
    """``eliminate_dead_code`` (side-effect-free nodes only) plus the trace-time dtype/device
    assertions (``_assert_tensor_metadata``) whose tensor nothing else uses any more; returns
    how many nodes were removed."""
    before = len(graph.nodes)
    while True:
        graph.eliminate_dead_code()
        asserts = [n for n in graph.nodes if n.op == "call_function" and n.target == aten._assert_tensor_metadata.default and isinstance(n.args[0], fx.Node)
                   and all(u.target == aten._assert_tensor_metadata.default for u in n.args[0].users)]
        if not asserts:
            return before - len(graph.nodes)
        for node in asserts:
            graph.erase_node(node)


def _key_placeholders(graph: fx.Graph, num_layers: int) -> tuple[list[fx.Node], fx.Node, list]:
    """The ``2L`` past KV placeholders (``[k0, v0, k1, v1, ...]``, the user inputs after ids,
    positions and mask), the output node and its outputs ``(logits, k0, v0, ...)``."""
    found = {int(m.group(1)): n for n in graph.nodes if n.op == "placeholder" and (m := _PAST_RE.match(n.target))}
    past = [found[i] for i in sorted(found)]
    output = next(n for n in graph.nodes if n.op == "output")
    outputs = list(output.args[0])
    if sorted(found) != list(range(2 * num_layers)) or len(outputs) < 1 + 2 * num_layers:
        raise PassError(f"expected a decoder-step graph with {2 * num_layers} past KV inputs and outputs, found {len(past)} inputs and {len(outputs) - 1} outputs; "
                        "share_attention runs on a captured decoder step (steerc.capture.capture_decoder_step)")
    return past, output, outputs


def share_attention(gm: fx.GraphModule, settings: ShareAttentionSettings) -> PassReport:
    """Rewrite each group's attention sites to share the first layer's probabilities (see module doc)."""
    graph = gm.graph
    arch = settings.architecture
    if not any(n.op == "placeholder" and n.target == "steer_bias" for n in graph.nodes):
        raise PassError(f"{arch}: the graph has no 'steer_bias' input; run insert_steering_bias before share_attention")
    if SHARED_META in gm.meta:
        raise PassError(f"{arch}: share_attention was applied twice (the graph already shares groups {gm.meta[SHARED_META]['groups']})")
    sites = find_attention_sites(gm, arch)
    by_layer: dict[int, AttentionSite] = {}
    for site in sites:
        if site.layer in by_layer:
            raise PassError(f"{arch}: layer {site.layer} has two attention sites ({by_layer[site.layer].node.name}, {site.node.name}); cannot share it")
        by_layer[site.layer] = site
    missing = [l for g in settings.groups for l in g if l not in by_layer]
    if missing:
        raise PassError(f"{arch}: no attention site found on layer(s) {missing} of the groups {[list(g) for g in settings.groups]}")
    kinds = {by_layer[l].kind for g in settings.groups for l in g}
    if len(kinds) != 1:
        raise PassError(f"{arch}: the groups mix attention kinds {sorted(kinds)}; cannot share")
    past, output, outputs = _key_placeholders(graph, settings.num_layers)

    reports = []
    for group in settings.groups:
        first = by_layer[group[0]]
        if first.kind == "sdpa":
            _check_sdpa(first)
            with graph.inserting_before(first.node):
                probs = _sdpa_probs(graph, first)  # [B, H, S, P+S]
                out = _grouped(graph, probs, first.node.args[2], first.node)  # [B, H, S, D]
            _replace(first.node, out)
            reports.append(SiteReport(first.node.name, first.layer, "sdpa", str(first.node.target), "explicit_probs", first.heads))
        else:
            probs = first.node  # eager: the softmax output is P_first, [B, H, S, P+S]
            reports.append(SiteReport(first.node.name, first.layer, first.kind, str(first.node.target), "explicit_probs", first.heads))
        probs.meta["steerc_shared_probs"] = tuple(group)
        for layer in group[1:]:
            site = by_layer[layer]
            if site.heads != first.heads:
                raise PassError(f"{arch}: layer {layer} has {site.heads} heads, layer {group[0]} has {first.heads}; cannot share")
            if site.kind == "sdpa":
                _check_sdpa(site)
                with graph.inserting_before(site.node):
                    out = _grouped(graph, probs, site.node.args[2], site.node)  # P_first @ V_own, [B, H, S, D]
                _replace(site.node, out)
                out.meta["steerc_shared_from"] = group[0]
            else:  # eager: everything after the softmax (dtype cast, dropout, @ V_own) stays
                if probs.meta["val"].dtype != site.node.meta["val"].dtype:
                    raise PassError(f"{arch}: layers {group[0]} and {layer} compute attention in different dtypes")
                _replace(site.node, probs)
            reports.append(SiteReport(site.node.name, layer, site.kind, str(site.node.target), f"shared_from_{group[0]}", site.heads))

    # The shared layers' key caches leave the graph's outputs, then the inputs once nothing reads them.
    removed_out = {1 + 2 * l for l in settings.shared_layers}
    output.args = (tuple(o for i, o in enumerate(outputs) if i not in removed_out),)
    _eliminate_dead_code(graph)
    removed_in = []
    for layer in settings.shared_layers:
        key, value = past[2 * layer], past[2 * layer + 1]
        for user in list(key.users):  # size queries (batch, past length) read the value cache instead: same shape
            if user.op == "call_function" and user.target == aten.sym_size.int and key.meta["val"].shape == value.meta["val"].shape:
                user.replace_input_with(key, value)
        if key.users:
            raise PassError(f"{arch}: layer {layer}'s past key cache is still read by {[u.name for u in key.users][:3]} after sharing; cannot drop it")
        removed_in.append(key.target)
        graph.erase_node(key)
    graph.lint()
    gm.recompile()
    gm.meta[SHARED_META] = {"groups": [list(g) for g in settings.groups], "shared_layers": list(settings.shared_layers)}
    notes = (f"settings={settings.to_json()}", f"removed inputs {removed_in}", f"removed outputs {sorted(removed_out)} (present keys of the shared layers)")
    return PassReport(name="share_attention", sites=tuple(reports), notes=notes)


ShareAttentionSettings.__doc__ = "Settings of :func:`share_attention`: contiguous layer ``groups`` of a model with ``num_layers`` x ``num_heads`` (``num_kv_heads`` KV heads)."
share_attention.settings_type = ShareAttentionSettings
