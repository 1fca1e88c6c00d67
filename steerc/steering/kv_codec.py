"""How a stored KV is kept at rest: the engine's own dtype, fp16, or int8 with per-token scales.

``encode(arrays, scheme)`` turns the KV arrays (``[B, Hkv, P, D]`` each, the engine's dtype) into
the tensors a KV entry holds plus the scheme's record; ``decode`` restores arrays of the
recorded dtype, so the engine always runs at its own dtype whatever the store keeps. An entry
records its scheme (an entry written before schemes existed has none: the engine's dtype), so a
store read by a server with another ``--kv-store-dtype`` still reads it correctly.

int8: each key and value vector (one head, one position: ``D`` values) is scaled by its own
absolute maximum / 127 and rounded; the scale is kept as fp16. The error of an element is at
most half a step, ``absmax / 254``, of its vector. fp16 keeps 11 significant bits (values of
this size are far from fp16's range limits; an infinite one is refused).
"""

from __future__ import annotations

import numpy as np

from steerc.stores import KV_SCHEMES, check_kv_scheme

__all__ = ["KV_SCHEMES", "encode", "decode"]


def encode(arrays: list[np.ndarray], scheme: str) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors (``kv.i``, and ``kv.i.scale`` for int8) and the record of ``scheme``."""
    check_kv_scheme(scheme)
    dtype = str(arrays[0].dtype) if arrays else "float32"
    if scheme == "fp16" and any(a.size and np.abs(a).max() > 6.0e4 for a in arrays):
        scheme = "engine"  # past fp16's range: kept as it is (the record says so)
    tensors: dict[str, np.ndarray] = {}
    for i, a in enumerate(arrays):
        if scheme == "engine":
            tensors[f"kv.{i}"] = a
        elif scheme == "fp16":
            tensors[f"kv.{i}"] = a.astype(np.float16)
        else:
            scale = (np.abs(a).max(-1, keepdims=True) / 127.0).astype(np.float16)  # [B, Hkv, P, 1]
            safe = np.where(scale > 0, scale, 1).astype(np.float32)
            tensors[f"kv.{i}"] = np.clip(np.rint(a / safe), -127, 127).astype(np.int8)
            tensors[f"kv.{i}.scale"] = scale
    return tensors, {"scheme": scheme, "dtype": dtype}


def decode(tensors: dict[str, np.ndarray], record: dict | None) -> list[np.ndarray]:
    """The KV arrays of an entry's tensors, in the recorded dtype (``record`` None: as stored)."""
    count = sum(1 for name in tensors if name.startswith("kv.") and not name.endswith(".scale"))
    arrays = [tensors[f"kv.{i}"] for i in range(count)]
    if not record or record.get("scheme", "engine") == "engine":
        return arrays
    scheme, dtype = check_kv_scheme(record["scheme"]), np.dtype(record.get("dtype", "float32"))
    if scheme == "fp16":
        return [a.astype(dtype) for a in arrays]
    return [(a.astype(np.float32) * tensors[f"kv.{i}.scale"].astype(np.float32)).astype(dtype) for i, a in enumerate(arrays)]
