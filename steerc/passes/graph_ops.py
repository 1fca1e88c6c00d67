"""Small helpers for inserting ATen nodes into a captured graph with correct metadata."""

from __future__ import annotations

import torch
from torch import fx

__all__ = ["fake_mode", "call"]


def fake_mode(graph: fx.Graph):
    """The fake mode the graph's values were traced under (None for a graph without metadata)."""
    return torch._guards.detect_fake_mode([n.meta["val"] for n in graph.nodes if n.op == "placeholder" and "val" in n.meta])


def call(graph: fx.Graph, target, *args, **kwargs) -> fx.Node:
    """Insert ``target(*args, **kwargs)`` and give it ``meta["val"]`` by running the op on its
    inputs' fake values (needed by the ExportedProgram verifier and by later passes)."""
    node = graph.call_function(target, args, kwargs)
    vals = torch.fx.node.map_arg((args, kwargs), lambda n: n.meta.get("val"))
    mode = fake_mode(graph)
    if mode is not None:
        with mode:
            node.meta["val"] = target(*vals[0], **vals[1])
    return node
