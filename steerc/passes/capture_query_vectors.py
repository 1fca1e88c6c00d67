"""Pass: also output each attention site's query vectors, summed over the call's real rows.

Adds one graph output ``attn_queries [B, L, H, D]`` (float32): for layer ``l`` and query head
``h``, the query vectors that layer's attention scores its keys with (after the rotary
embedding, before the ``1/sqrt(D)`` scale), summed over the query rows of this call that are
real tokens (``attention_mask[:, -S:]``; left-padding rows count 0). Q-LLM's block retrieval
scores a block of the cached context by the dot product of its representative keys with
these vectors (``steerc.steering.methods.qllm``); dividing by the number of real rows gives
the mean query.

Prefill and decode shapes are handled alike: a call with ``S`` new tokens sums ``S`` rows (a
decode step, ``S = 1``, outputs its one query); the past length ``P`` does not enter. Memory
is ``[B, H, S, D]`` per layer, what the site reads anyway.

Per site kind:

* SDPA: the query is the op's first argument ``[B, H, S, D]``.
* eager ``softmax``: the query is the first argument of the matmul that produced the logits,
  found by walking back from the softmax input through the elementwise ops between them
  (scale, mask, soft-capping, dtype casts).

After ``share_attention``, a shared layer (no site of its own, no query projection) reports the
queries of its group's first layer, whose probabilities it uses.

Runs on the analysis graph after ``capture_attention_importance`` (decode never pays for it);
it raises on a graph without the mask input, on a second application, and when a layer has no
site or a site's query cannot be found.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from steerc.errors import PassError
from steerc.passes.attention_sites import AttentionSite, sites_by_layer
from steerc.passes.graph_ops import call as _call
from steerc.passes.report import PassReport, SiteReport
from steerc.settings_base import JsonDataclass, check_int

__all__ = ["QueryVectorSettings", "capture_query_vectors", "QUERY_OUTPUT"]

aten = torch.ops.aten
QUERY_OUTPUT = "attn_queries"

_LOGIT_MATMULS = {aten.matmul.default, aten.bmm.default}
# Elementwise ops that may sit between QK^T and the softmax in eager attention code.
_PASS_THROUGH = {
    aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.add.Tensor, aten.sub.Tensor, aten.tanh.default,
    aten._to_copy.default, aten.to.dtype, aten.clone.default, aten.contiguous.default, aten.view.default, aten.reshape.default,
    aten.flatten.using_ints,  # grouped-query logits [B, Hkv, G, S, T] -> [B, H, S, T] (share_attention's explicit first layer)
}


@dataclass(frozen=True)
class QueryVectorSettings(JsonDataclass):
    num_layers: int
    num_heads: int
    head_dim: int
    architecture: str = "model"
    mask_input: str = "attention_mask"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "head_dim"):
            check_int(name, getattr(self, name), 1)
        if not self.mask_input.isidentifier():
            raise ValueError(f"mask_input must be a Python identifier, got {self.mask_input!r}")

    @classmethod
    def for_model(cls, geometry, architecture: str, attn_implementation: str = "sdpa") -> "QueryVectorSettings":
        return cls(num_layers=geometry.num_layers, num_heads=geometry.num_heads, head_dim=geometry.head_dim, architecture=architecture)


def _eager_query(site: AttentionSite) -> fx.Node:
    """The ``q`` of ``matmul(q, k^T)`` feeding an eager softmax site."""
    node = site.node.args[0]
    for _ in range(12):
        if not isinstance(node, fx.Node) or node.op != "call_function":
            break
        if node.target in _LOGIT_MATMULS:
            query = node.args[0]
            if isinstance(query, fx.Node) and query.op == "call_function" and query.target == aten.unflatten.int:
                query = query.args[0]  # queries viewed as [B, Hkv, G, S, D] for grouped keys
            return query
        if node.target not in _PASS_THROUGH:
            break
        # follow the operand that carries the logits (the first tensor argument of 4 or 5 dims)
        node = next((a for a in node.args if isinstance(a, fx.Node) and getattr(a.meta.get("val"), "dim", lambda: 0)() in (4, 5)), None)
    raise PassError(f"{site.node.name}: cannot find the query matmul behind this eager softmax (layer {site.layer})")


def _row_sum(graph: fx.Graph, query: fx.Node, mask: fx.Node) -> fx.Node:
    """``[B, H, S, D]`` queries, ``attention_mask [B, P+S]`` -> ``[B, H, D]`` float32 summed over real rows."""
    q = _call(graph, aten._to_copy.default, query, dtype=torch.float32)  # [B, H, S, D]
    rows = _call(graph, aten.sym_size.int, q, 2)  # S
    cols = _call(graph, aten.sym_size.int, mask, 1)  # P+S
    start = _call(graph, operator.sub, cols, rows)  # P
    real = _call(graph, aten.slice.Tensor, mask, 1, start, cols)  # [B, S]
    real = _call(graph, aten._to_copy.default, real, dtype=torch.float32)
    real = _call(graph, aten.unsqueeze.default, real, 1)
    real = _call(graph, aten.unsqueeze.default, real, 3)  # [B, 1, S, 1]
    weighted = _call(graph, aten.mul.Tensor, q, real)
    return _call(graph, aten.sum.dim_IntList, weighted, [2])  # [B, H, D]


def capture_query_vectors(gm: fx.GraphModule, settings: QueryVectorSettings) -> PassReport:
    """Add the ``attn_queries`` output (see module doc)."""
    graph = gm.graph
    placeholders = {n.target: n for n in graph.nodes if n.op == "placeholder"}
    if settings.mask_input not in placeholders:
        raise PassError(f"{settings.architecture}: the graph has no '{settings.mask_input}' input to tell real query rows from padding")
    output = next(n for n in graph.nodes if n.op == "output")
    if any(isinstance(n, fx.Node) and n.meta.get("steerc_output") == QUERY_OUTPUT for n in output.args[0]):
        raise PassError(f"{settings.architecture}: the graph already outputs '{QUERY_OUTPUT}': capture_query_vectors was applied twice")
    by_layer, shared = sites_by_layer(gm, settings.num_layers, settings.architecture)
    per_layer = []
    for layer in range(settings.num_layers):
        if layer in shared:
            per_layer.append(per_layer[shared[layer]])  # [B, H, D], the group's first layer's queries
            continue
        site = by_layer[layer]
        query = site.node.args[0] if site.kind == "sdpa" else _eager_query(site)
        shape = tuple(query.meta["val"].shape)
        if len(shape) != 4 or shape[1] != settings.num_heads or shape[3] != settings.head_dim:
            raise PassError(f"{settings.architecture}: layer {layer}'s query is {shape}, expected [B, {settings.num_heads}, S, {settings.head_dim}]")
        with graph.inserting_before(site.node):
            per_layer.append(_row_sum(graph, query, placeholders[settings.mask_input]))  # [B, H, D]
    with graph.inserting_before(output):
        queries = _call(graph, aten.stack.default, per_layer, 1)  # [B, L, H, D]
    queries.meta["steerc_output"] = QUERY_OUTPUT
    output.args = ((*output.args[0], queries),)
    graph.lint()
    gm.recompile()
    reports = tuple(SiteReport(s.node.name, s.layer, s.kind, str(s.node.target), s.mask, s.heads) for s in (by_layer[i] for i in range(settings.num_layers)
                                                                                                          if i in by_layer))
    return PassReport(name="capture_query_vectors", sites=reports, outputs_added=(QUERY_OUTPUT,), notes=(f"settings={settings.to_json()}",))


QueryVectorSettings.__doc__ = "Settings of :func:`capture_query_vectors`: the output covers ``num_layers`` x ``num_heads`` x ``head_dim``."
capture_query_vectors.settings_type = QueryVectorSettings
capture_query_vectors.supports_shared_attention = True  # see the module doc
