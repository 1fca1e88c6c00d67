"""The KV cache of an in-place engine (``steerc compile --kv in-place``): preallocated buffers.

Each past input of the step graph gets one numpy array ``[B, Hkv, C, D]`` of capacity ``C``,
wrapped once as an ONNX Runtime ``OrtValue`` (which shares the array's memory) and bound as
both the graph's ``past_key_values.*`` input and its ``present.*`` output. A step writes its
``S`` new positions at ``P`` (``TensorScatter``, see :mod:`steerc.passes.onnx.kv_in_place`) and
ONNX Runtime skips the copy because the output buffer is the input buffer: a decode step no
longer copies the past.

The capacity grows in chunks of :data:`KV_CHUNK` positions (one copy when full), so the fused
attention, which runs over all ``C`` keys (the unwritten ones masked), does about ``P+S``
keys' work. Slots past ``length`` stay finite (zeros or old values), which masked attention
needs (0 * NaN would be NaN).

:class:`~steerc.runtime.kv_cache.KVCache` (``[B, Hkv, P, D]`` per layer) stays the interchange
format that stores, saved files and the concat graphs use: :meth:`KVBuffers.from_cache` and
:meth:`KVBuffers.to_cache` convert. :class:`InPlaceSession` runs an in-place graph behind
the concat contract (numpy pasts in, ``present [B, Hkv, P+S, D]`` out) for callers that hold a
``KVCache``.
"""

from __future__ import annotations

import numpy as np

from steerc.errors import EngineError
from steerc.runtime.kv_cache import KVCache

__all__ = ["KVBuffers", "InPlaceSession", "KV_CHUNK", "quantize", "round_capacity"]

KV_CHUNK = 128  # capacity grows by multiples of this many positions (measured: 64 and 256 decode alike)
_PAST, _PRESENT = "past_key_values.", "present."


def round_capacity(total: int, chunk: int = KV_CHUNK, limit: int | None = None) -> int:
    """``total`` rounded up to a multiple of ``chunk``, at most ``limit`` (but never below ``total``)."""
    capacity = -(-total // chunk) * chunk
    return max(total, min(capacity, limit)) if limit else capacity


def quantize(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``x [B, Hkv, P, D]`` as int8 with ``scale [Hkv, D]``: ``round(x / scale)`` saturated to
    [-128, 127], as ONNX Runtime's GroupQueryAttention writes its int8 cache (so a value it wrote
    comes back to the same int8 after ``q * scale``)."""
    return np.clip(np.rint(x / scale[None, :, None, :]), -128, 127).astype(np.int8)


class KVBuffers:
    """A batch's KV cache as buffers ``[B, Hkv, C, D]`` (``flat`` order: ``k0, v0, k1, v1, ...``),
    of which the first ``length`` positions hold the cache. A step updates it in place."""

    def __init__(self, arrays: list[np.ndarray], length: int, chunk: int = KV_CHUNK, scales: list[np.ndarray] | None = None):
        import onnxruntime as ort

        if not arrays or len(arrays) % 2:
            raise ValueError(f"KVBuffers needs a key and a value buffer per layer, got {len(arrays)} arrays")
        shape, dtype = arrays[0].shape, arrays[0].dtype
        for a in arrays:
            if a.ndim != 4 or a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
                raise ValueError(f"KVBuffers arrays must be C-contiguous [B, Hkv, C, D] of one shape and dtype; got {a.shape} {a.dtype} and {shape} {dtype}")
        if not 0 <= length <= shape[2]:
            raise ValueError(f"KVBuffers length {length} is outside the capacity {shape[2]}")
        if scales is not None and (dtype != np.int8 or len(scales) != len(arrays) or any(np.shape(sc) != (shape[1], shape[3]) for sc in scales)):
            raise ValueError(f"int8 KV buffers need int8 arrays and one [Hkv, D] = [{shape[1]}, {shape[3]}] scale per array")
        self.arrays = list(arrays)
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]  # same memory as the arrays
        self.length = length
        self.chunk = chunk
        # An int8 cache (--kv-cache int8): x = q * scale, one [Hkv, D] scale per array (flat order).
        self.scales = None if scales is None else [np.asarray(sc, np.float32) for sc in scales]

    @classmethod
    def empty(cls, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, dtype=np.float32, capacity: int = KV_CHUNK,
              chunk: int = KV_CHUNK) -> "KVBuffers":
        return cls([np.zeros((batch, num_kv_heads, capacity, head_dim), dtype) for _ in range(2 * num_layers)], 0, chunk)

    @classmethod
    def from_cache(cls, cache: KVCache, capacity: int = 0, chunk: int = KV_CHUNK, scales: list[np.ndarray] | None = None) -> "KVBuffers":
        """Buffers of capacity ``max(capacity, cache.length)`` holding ``cache`` (one copy; ``cache``
        is not modified); with ``scales``, int8 buffers holding it quantized (:func:`quantize`)."""
        if cache.keyless:
            raise EngineError(f"KV buffers hold a key and a value cache for every layer; this cache is {cache.layout}")
        capacity = max(capacity, cache.length)
        arrays = []
        for i, a in enumerate(cache.flat()):
            B, H, P, D = a.shape
            buf = np.zeros((B, H, capacity, D), a.dtype if scales is None else np.int8)
            buf[:, :, :P] = a if scales is None else quantize(a, scales[i])
            arrays.append(buf)
        return cls(arrays, cache.length, chunk, scales)

    def to_cache(self) -> KVCache:
        """The first ``length`` positions as a :class:`KVCache`: the arrays themselves when the
        buffers are exactly full, otherwise a copy; an int8 cache dequantized (float32)."""
        if self.scales is not None:
            return KVCache.from_flat([a[:, :, : self.length] * sc[None, :, None, :] for a, sc in zip(self.arrays, self.scales)])
        if self.length == self.capacity:
            return KVCache.from_flat(self.arrays)
        return KVCache.from_flat([a[:, :, : self.length].copy() for a in self.arrays])

    @property
    def num_layers(self) -> int:
        return len(self.arrays) // 2

    @property
    def batch(self) -> int:
        return self.arrays[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.arrays[0].shape[2]

    @property
    def dtype(self):
        """The dtype of the KV these buffers hold (float32 for an int8 cache, which they store quantized)."""
        return np.dtype(np.float32) if self.scales is not None else self.arrays[0].dtype

    @property
    def nbytes(self) -> int:
        """Bytes allocated (the whole capacity)."""
        return sum(a.nbytes for a in self.arrays)

    def reserve(self, total: int, limit: int | None = None) -> None:
        """Make room for ``total`` positions: if the capacity is short, reallocate to
        :func:`round_capacity` of ``total`` (at most ``limit``) and copy the cache over once."""
        if total <= self.capacity:
            return
        capacity = round_capacity(total, self.chunk, limit)
        grown = []
        for a in self.arrays:
            B, H, _, D = a.shape
            buf = np.zeros((B, H, capacity, D), a.dtype)
            buf[:, :, : self.length] = a[:, :, : self.length]
            grown.append(buf)
        self.__init__(grown, self.length, self.chunk, self.scales)

    def row(self, i: int) -> "KVBuffers":
        """Row ``i`` as buffers ``[1, Hkv, C, D]`` sharing this batch's memory (a step on it writes
        here; this object's ``length`` is not advanced)."""
        return KVBuffers([a[i:i + 1] for a in self.arrays], self.length, self.chunk, self.scales)


class InPlaceSession:
    """An in-place step graph's ONNX Runtime session, run through IO binding.

    :meth:`step` runs one call on :class:`KVBuffers` (in place). :meth:`run` keeps the concat
    contract, ``run(output_names, feed)`` with numpy pasts ``[B, Hkv, P, D]`` returning presents
    ``[B, Hkv, P+S, D]``: it copies the pasts into buffers of capacity exactly ``P+S`` (the
    one copy the concat graph makes too), so the compile's self-check and callers that hold a
    :class:`KVCache` work unchanged."""

    def __init__(self, session, rows_apart: bool = False, scales: list[np.ndarray] | None = None):
        self.session = session
        self.scales = scales  # an int8 cache's scales (--kv-cache int8): run() quantizes the pasts and dequantizes the presents
        # GroupQueryAttention graphs (``--attention-op group-query``): ONNX Runtime's CPU kernel
        # takes several new tokens after a past for one row at a time ("batch_size must be 1 when
        # sequence_length > 1 and past context is given"), so such calls run row by row.
        self.rows_apart = rows_apart
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.past_names = [n for n in self.input_names if n.startswith(_PAST)]
        self.present_names = [_PRESENT + n[len(_PAST):] for n in self.past_names]
        self.other_inputs = [n for n in self.input_names if not n.startswith(_PAST)]
        self.logits_name = self.output_names[0]
        self.logits_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}[session.get_outputs()[0].type]
        vocab = session.get_outputs()[0].shape[-1]
        self.vocab = vocab if isinstance(vocab, int) else None
        self.last_logits = session.get_outputs()[0].shape[1] == 1  # --logits last: one row per call, not S

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def step(self, inputs: dict[str, np.ndarray], buffers: KVBuffers) -> np.ndarray:
        """Run the graph on ``inputs`` (every non-KV input by name) after ``buffers``, which
        must already have room for the new positions; write them in place, advance
        ``buffers.length`` and return ``logits [B, S, V]`` (``[B, 1, V]`` on a ``--logits last`` graph)."""
        import onnxruntime as ort

        B, S = inputs["input_ids"].shape
        if len(buffers.values) != len(self.past_names):
            raise EngineError(f"KV buffers hold {len(buffers.values)} arrays but the engine takes {len(self.past_names)} past inputs")
        if buffers.length + S > buffers.capacity:
            raise EngineError(f"KV buffers of capacity {buffers.capacity} cannot take {S} new positions after {buffers.length}; reserve them first")
        if self.rows_apart and B > 1 and S > 1 and buffers.length > 0:
            logits = [self.step({name: x[i:i + 1] for name, x in inputs.items()}, buffers.row(i)) for i in range(B)]  # [1, S, V] each
            buffers.length += S
            return np.concatenate(logits)
        binding = self.session.io_binding()
        for name in self.other_inputs:
            binding.bind_cpu_input(name, np.ascontiguousarray(inputs[name]))
        logits = None
        if self.vocab is None:  # no static vocabulary dimension: ONNX Runtime allocates (and numpy() copies)
            binding.bind_output(self.logits_name, "cpu")
        else:  # written straight into a numpy array
            logits = np.empty((B, 1 if self.last_logits else S, self.vocab), self.logits_dtype)
            binding.bind_ortvalue_output(self.logits_name, ort.OrtValue.ortvalue_from_numpy(logits))
        for past, present, value in zip(self.past_names, self.present_names, buffers.values):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: TensorScatter writes in place
        self.session.run_with_iobinding(binding)
        buffers.length += S
        return logits if logits is not None else binding.get_outputs()[0].numpy()

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The concat contract: ``feed`` with numpy pasts; returns the asked outputs
        (``logits`` and/or ``present.*``, the latter ``[B, Hkv, P+S, D]``)."""
        pasts = [np.asarray(feed[n]) for n in self.past_names]
        S = feed["input_ids"].shape[1]
        buffers = KVBuffers.from_cache(KVCache.from_flat(pasts), capacity=pasts[0].shape[2] + S, scales=self.scales)
        logits = self.step(feed, buffers)
        presents = buffers.to_cache().flat() if self.scales is not None else buffers.arrays
        by_name = {self.logits_name: logits, **dict(zip(self.present_names, presents))}
        unknown = [n for n in output_names if n not in by_name]
        if unknown:
            raise ValueError(f"the in-place step graph has no output(s) {unknown}")
        return [by_name[n] for n in output_names]
