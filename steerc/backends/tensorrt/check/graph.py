"""What the TensorRT rules read off an ONNX graph: each tensor's dtype, rank and shape, which
tensors are constants (:class:`GraphInfo`), and small accessors for nodes (attributes, inputs,
labels). Reads protobufs only; ``onnx`` is imported inside the functions that need it."""

from __future__ import annotations

__all__ = ["FLOAT32", "UINT8", "INT64", "BOOL", "FLOAT16", "DEFAULT_DOMAINS", "GraphInfo", "attr", "has_attr", "input_name", "node_label", "empty_graph"]

FLOAT32, UINT8, INT64, BOOL, FLOAT16 = 1, 2, 7, 9, 10
DEFAULT_DOMAINS = ("", "ai.onnx")


class GraphInfo:
    """Name -> (elem_type, rank) and the set of constant names of a (sub)graph and its parents."""

    def __init__(self, graph, parent: GraphInfo | None = None):
        self.types: dict[str, tuple[int, int | None]] = dict(parent.types) if parent else {}
        self.shapes: dict[str, list | None] = dict(parent.shapes) if parent else {}
        self.constants: set[str] = set(parent.constants) if parent else set()
        for init in graph.initializer:
            self.types[init.name] = (init.data_type, len(init.dims))
            self.shapes[init.name] = list(init.dims)
            self.constants.add(init.name)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            tt = value.type.tensor_type if value.type.HasField("tensor_type") else None
            if tt is None or not tt.elem_type:
                continue
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                self.types.setdefault(value.name, (tt.elem_type, len(dims)))
                self.shapes.setdefault(value.name, dims)
            else:
                self.types.setdefault(value.name, (tt.elem_type, None))
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                self.constants.update(node.output)
                for a in node.attribute:
                    if a.name == "value":
                        self.types.setdefault(node.output[0], (a.t.data_type, len(a.t.dims)))
                        self.shapes.setdefault(node.output[0], list(a.t.dims))

    def dtype(self, name: str) -> int | None:
        return self.types.get(name, (None, None))[0] if name else None

    def rank(self, name: str) -> int | None:
        return self.types.get(name, (None, None))[1] if name else None


def attr(node, name: str, default=None):
    """The value of ``node``'s attribute ``name``, or ``default``."""
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def has_attr(node, name: str) -> bool:
    return any(a.name == name for a in node.attribute)


def input_name(node, i: int) -> str:
    """``node``'s input ``i``, or ``""`` when it is absent."""
    return node.input[i] if len(node.input) > i else ""


def node_label(node, index: int) -> str:
    return node.name or f"#{index} -> {node.output[0] if node.output else '?'}"


def empty_graph():
    import onnx

    return onnx.GraphProto()
