"""A batch's KV cache: per-layer key/value arrays ``[B, Hkv, P, D]`` (numpy, the engine's dtype).

The engine graph returns ``present = concat(past, new)`` for every layer, so extending the
cache is taking the outputs (no copy on the Python side). Caches save to and load from
safetensors (atomic write, geometry checked on read) and slice/concatenate along the
sequence, which LLMSteer uses to store and reuse contexts.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerc.errors import EngineError

__all__ = ["KVCache"]


@dataclass
class KVCache:
    keys: list[np.ndarray]  # L x [B, Hkv, P, D]
    values: list[np.ndarray]  # L x [B, Hkv, P, D]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(f"KVCache needs as many key as value arrays (got {len(self.keys)} and {len(self.values)})")
        shape = self.keys[0].shape
        for arr in (*self.keys, *self.values):
            if arr.shape != shape or arr.ndim != 4:
                raise ValueError(f"KVCache arrays must all be [B, Hkv, P, D] of one shape; got {arr.shape} and {shape}")

    @classmethod
    def empty(cls, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, dtype=np.float32) -> "KVCache":
        make = lambda: np.zeros((batch, num_kv_heads, 0, head_dim), dtype)  # noqa: E731
        return cls([make() for _ in range(num_layers)], [make() for _ in range(num_layers)])

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.keys, *self.values))

    def flat(self) -> list[np.ndarray]:
        """``[k0, v0, k1, v1, ...]``, the engine's past inputs in order."""
        return [a for kv in zip(self.keys, self.values) for a in kv]

    @classmethod
    def from_flat(cls, arrays: list[np.ndarray]) -> "KVCache":
        return cls(list(arrays[0::2]), list(arrays[1::2]))

    def slice(self, start: int, end: int | None = None) -> "KVCache":
        """Positions ``[start, end)`` along the sequence (a copy)."""
        sl = np.s_[:, :, start:end, :]
        return KVCache([k[sl].copy() for k in self.keys], [v[sl].copy() for v in self.values])

    def take(self, positions: np.ndarray) -> "KVCache":
        """The given sequence positions (an index array, in order) of every layer (a copy).

        Keys are stored after rotary embedding, so a gathered cache still encodes each key's
        original position; later tokens continue at their original position ids (see
        ``position_offset`` in :mod:`steerc.runtime.generate`)."""
        index = np.asarray(positions, np.int64)
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= self.length)):
            raise ValueError(f"take: positions must be a 1-D index into the cache's {self.length} positions")
        return KVCache([np.take(k, index, axis=2) for k in self.keys], [np.take(v, index, axis=2) for v in self.values])

    def rows(self, index) -> "KVCache":
        """A sub-batch (a copy)."""
        return KVCache([k[index].copy() for k in self.keys], [v[index].copy() for v in self.values])

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """Join caches along the sequence (same batch, layers and heads)."""
        if not caches:
            raise ValueError("concat needs at least one cache")
        layers = caches[0].num_layers
        return KVCache(
            [np.concatenate([c.keys[i] for c in caches], axis=2) for i in range(layers)],
            [np.concatenate([c.values[i] for c in caches], axis=2) for i in range(layers)],
        )

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file atomically (temporary file, then rename)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {f"{i}.{kind}": np.ascontiguousarray(arr) for i, (k, v) in enumerate(zip(self.keys, self.values)) for kind, arr in (("key", k), ("value", v))}
        meta = {"steerc_kv_cache": "1", "num_layers": str(self.num_layers), **(metadata or {})}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> tuple["KVCache", dict[str, str]]:
        """Read a cache written by :meth:`save`; raises :class:`EngineError` on a bad file."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                layers = int(meta.get("num_layers", "-1"))
                if meta.get("steerc_kv_cache") != "1" or layers < 1:
                    raise EngineError(f"{path} is not a steerc KV cache file")
                keys = [fh.get_tensor(f"{i}.key") for i in range(layers)]
                values = [fh.get_tensor(f"{i}.value") for i in range(layers)]
        except EngineError:
            raise
        except Exception as exc:  # safetensors raises several kinds on truncated/corrupt files
            raise EngineError(f"KV cache file {path} is unreadable ({type(exc).__name__}: {exc}); delete it to recompute") from None
        return cls(keys, values), meta
