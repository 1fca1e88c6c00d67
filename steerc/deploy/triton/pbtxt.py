"""Protobuf text format for Triton's ``config.pbtxt``: string and list literals, manifest dtypes
and dims as Triton ``DataType`` names and dims, and the ``input [...]`` / ``output [...]`` blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from steerc.errors import EngineError

__all__ = ["TRITON_DTYPES", "triton_dtype", "triton_dims", "text", "list_text", "tensor_block"]

TRITON_DTYPES = {
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL",
    "float32": "TYPE_FP32", "fp32": "TYPE_FP32", "float": "TYPE_FP32",
    "float16": "TYPE_FP16", "fp16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16", "bf16": "TYPE_BF16",
}


def triton_dtype(dtype: str) -> str:
    """Triton's ``DataType`` name (``TYPE_FP32`` …) for a manifest dtype (``float32`` …)."""
    try:
        return TRITON_DTYPES[str(dtype).lower()]
    except KeyError:
        raise EngineError(f"tensor dtype {dtype!r} has no Triton equivalent known to steerc (known: {', '.join(sorted(set(TRITON_DTYPES)))})") from None


def triton_dims(dims: Iterable[str | int]) -> list[int]:
    """Manifest dims -> Triton dims: named (dynamic) dims become -1, fixed ones stay."""
    out = []
    for d in dims:
        if isinstance(d, str):
            out.append(-1)
        elif isinstance(d, int) and d >= 1:
            out.append(int(d))
        else:
            raise EngineError(f"tensor dim {d!r} is neither a dimension name nor a size >= 1; the engine manifest is corrupt")
    return out


def text(value: str) -> str:
    """A protobuf text-format string literal."""
    if any(ord(c) < 0x20 for c in value):
        raise EngineError(f"name {value!r} contains control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def list_text(values: Iterable[Any]) -> str:
    """A protobuf text-format list literal."""
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def tensor_block(key: str, specs: list[dict]) -> list[str]:
    """The lines of ``key [ {name, data_type, dims}, ... ]`` for manifest tensor specs (none when empty)."""
    if not specs:
        return []
    entries = []
    for spec in specs:
        entries.append("\n".join([
            "  {",
            f"    name: {text(spec['name'])}",
            f"    data_type: {triton_dtype(spec['dtype'])}",
            f"    dims: {list_text(triton_dims(spec['dims']))}  # {list_text(spec['dims'])}",
            "  }",
        ]))
    return [f"{key} [", ",\n".join(entries), "]"]
