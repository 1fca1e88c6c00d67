"""A batch's KV cache: per-layer key/value arrays ``[B, Hkv, P, D]`` (numpy, the engine's dtype).

The engine graph returns ``present = concat(past, new)`` for every layer, so extending the
cache is taking the outputs (no copy on the Python side). Caches save to and load from
safetensors (atomic write, geometry checked on read) and slice/concatenate along the
sequence, which LLMSteer uses to store and reuse contexts.

Layout: an engine compiled with shared attention keeps no key cache for its shared layers
(they reuse another layer's attention probabilities). Such a cache has ``keys[l] is None``
for those layers; :attr:`KVCache.keyless` lists them (``()`` for a full cache). ``flat()``
yields exactly the engine's past inputs in order (``k0, v0, v1, ...``: no key of a keyless
layer), :meth:`from_flat` needs the layout to read them back, every other operation keeps
it, and :meth:`save`/:meth:`load` record and check it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerc.errors import EngineError

__all__ = ["KVCache", "describe_layout"]


def describe_layout(keyless) -> str:
    """A layout in words, for error messages."""
    keyless = tuple(keyless)
    if not keyless:
        return "full (keys and values of every layer)"
    return f"shared attention (no keys for layers {_ranges(keyless)})"


def _ranges(layers) -> str:
    out, start, prev = [], None, None
    for l in sorted(layers):
        if start is None:
            start = prev = l
        elif l == prev + 1:
            prev = l
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = l
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(out)


def _parse_ranges(text: str) -> tuple[int, ...]:
    layers = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        layers += range(int(first), int(last or first) + 1)
    return tuple(layers)


@dataclass
class KVCache:
    keys: list[np.ndarray | None]  # L x [B, Hkv, P, D]; None for a keyless (shared-attention) layer
    values: list[np.ndarray]  # L x [B, Hkv, P, D]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(f"KVCache needs as many key as value arrays (got {len(self.keys)} and {len(self.values)})")
        if any(v is None for v in self.values):
            raise ValueError("KVCache: every layer needs its values (only keys may be None, for shared-attention layers)")
        shape = self.values[0].shape
        for arr in (*(k for k in self.keys if k is not None), *self.values):
            if arr.shape != shape or arr.ndim != 4:
                raise ValueError(f"KVCache arrays must all be [B, Hkv, P, D] of one shape; got {arr.shape} and {shape}")

    @classmethod
    def empty(cls, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, dtype=np.float32, keyless=()) -> "KVCache":
        make = lambda: np.zeros((batch, num_kv_heads, 0, head_dim), dtype)  # noqa: E731
        return cls([None if i in keyless else make() for i in range(num_layers)], [make() for _ in range(num_layers)])

    @property
    def keyless(self) -> tuple[int, ...]:
        """Layers without a key cache (shared attention); ``()`` for a full cache."""
        return tuple(i for i, k in enumerate(self.keys) if k is None)

    @property
    def layout(self) -> str:
        return describe_layout(self.keyless)

    def check_layout(self, keyless, what: str = "the engine") -> None:
        """Raise :class:`EngineError` unless this cache has the layout ``keyless`` (e.g. a full
        cache fed to an engine compiled with shared attention)."""
        if self.keyless != tuple(keyless):
            raise EngineError(f"KV cache layout mismatch: the cache is {self.layout} but {what} expects {describe_layout(keyless)}; "
                              "a KV cache only works with an engine of the same layout (recompute it with this engine)")

    def _map(self, fn) -> "KVCache":
        return KVCache([None if k is None else fn(k) for k in self.keys], [fn(v) for v in self.values])

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch(self) -> int:
        return self.values[0].shape[0]

    @property
    def length(self) -> int:
        return self.values[0].shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes actually held (a keyless layer holds only its values)."""
        return sum(a.nbytes for a in (*self.keys, *self.values) if a is not None)

    def flat(self) -> list[np.ndarray]:
        """``[k0, v0, k1, v1, ...]`` without the keys of keyless layers: the engine's past inputs in order."""
        return [a for kv in zip(self.keys, self.values) for a in kv if a is not None]

    @classmethod
    def from_flat(cls, arrays: list[np.ndarray], keyless=()) -> "KVCache":
        """Inverse of :meth:`flat` for the layout ``keyless`` (default: a full cache, ``[k0, v0, ...]``)."""
        arrays, keyless = list(arrays), set(keyless)
        layers = (len(arrays) + len(keyless)) // 2
        if 2 * layers - len(keyless) != len(arrays) or any(l >= layers or l < 0 for l in keyless):
            raise ValueError(f"from_flat: {len(arrays)} arrays do not fit the layout {describe_layout(sorted(keyless))}")
        keys, values, it = [], [], iter(arrays)
        for i in range(layers):
            keys.append(None if i in keyless else next(it))
            values.append(next(it))
        return cls(keys, values)

    def slice(self, start: int, end: int | None = None) -> "KVCache":
        """Positions ``[start, end)`` along the sequence (a copy)."""
        sl = np.s_[:, :, start:end, :]
        return self._map(lambda a: a[sl].copy())

    def take(self, positions: np.ndarray) -> "KVCache":
        """The given sequence positions (an index array, in order) of every layer (a copy).

        Keys are stored after rotary embedding, so a gathered cache still encodes each key's
        original position; later tokens continue at their original position ids (see
        ``position_offset`` in :mod:`steerc.runtime.generate`)."""
        index = np.asarray(positions, np.int64)
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= self.length)):
            raise ValueError(f"take: positions must be a 1-D index into the cache's {self.length} positions")
        return self._map(lambda a: np.take(a, index, axis=2))

    def rows(self, index) -> "KVCache":
        """A sub-batch (a copy)."""
        return self._map(lambda a: a[index].copy())

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """Join caches along the sequence (same batch, layers, heads and layout)."""
        if not caches:
            raise ValueError("concat needs at least one cache")
        layers, keyless = caches[0].num_layers, caches[0].keyless
        for c in caches[1:]:
            if c.keyless != keyless:
                raise ValueError(f"concat: caches of different layouts ({describe_layout(keyless)} and {c.layout})")
        return KVCache(
            [None if i in keyless else np.concatenate([c.keys[i] for c in caches], axis=2) for i in range(layers)],
            [np.concatenate([c.values[i] for c in caches], axis=2) for i in range(layers)],
        )

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file atomically (temporary file, then rename). A cache with keyless
        layers records them in the metadata (``keyless_layers``, e.g. ``"20-29"``)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {f"{i}.{kind}": np.ascontiguousarray(arr) for i, (k, v) in enumerate(zip(self.keys, self.values))
                   for kind, arr in (("key", k), ("value", v)) if arr is not None}
        meta = {"steerc_kv_cache": "1", "num_layers": str(self.num_layers), **(metadata or {})}
        if self.keyless:
            meta["keyless_layers"] = _ranges(self.keyless)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path, keyless=None) -> tuple["KVCache", dict[str, str]]:
        """Read a cache written by :meth:`save`; raises :class:`EngineError` on a bad file, and
        with ``keyless`` (the layout expected, e.g. ``engine.keyless_layers``) on a file of
        another layout."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                layers = int(meta.get("num_layers", "-1"))
                if meta.get("steerc_kv_cache") != "1" or layers < 1:
                    raise EngineError(f"{path} is not a steerc KV cache file")
                stored = _parse_ranges(meta.get("keyless_layers", ""))
                if keyless is not None and stored != tuple(keyless):
                    raise EngineError(f"KV cache file {path} has layout {describe_layout(stored)}, expected {describe_layout(keyless)}; "
                                      "it was written by an engine of another layout: delete it to recompute")
                keys = [None if i in stored else fh.get_tensor(f"{i}.key") for i in range(layers)]
                values = [fh.get_tensor(f"{i}.value") for i in range(layers)]
        except EngineError:
            raise
        except Exception as exc:  # safetensors raises several kinds on truncated/corrupt files
            raise EngineError(f"KV cache file {path} is unreadable ({type(exc).__name__}: {exc}); delete it to recompute") from None
        return cls(keys, values), meta
