"""ONNX Runtime sessions over an engine's graphs, and the weights they may share in memory."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from steerc.backends.onnx.export import external_data
from steerc.errors import require

__all__ = ["create_session", "session_config", "SharedWeights", "PREPACK_ONLY_OPS", "SESSION_CONFIG"]

# Ops (as ``op_counts`` names them) whose CPU kernels need their weights pre-packed: unpacked,
# MatMulNBits dequantizes its weights on every call (a decode step ~7x slower on SmolLM2 int4).
PREPACK_ONLY_OPS = ("com.microsoft::MatMulNBits",)
# Session config entries of every session: ONNX Runtime's own defaults. Spinning (worker threads
# busy-wait between parallel sections) is left on: on an idle machine it decodes SmolLM2-135M int4
# 1.46x faster than with it off (67.0 against 45.9 tok/s at 512 tokens, 2 threads, same run), while
# on cores other jobs share, off is faster (1.5-1.7x); there, set
# STEERC_ORT_CONFIG=session.intra_op.allow_spinning=0 (docs/BENCHMARKS.md, "A leaner int4 decode step").
SESSION_CONFIG: dict[str, str] = {}


class SharedWeights:
    """The external weights of an engine's graphs, memory-mapped once and given to each session
    as user-owned initializers (ONNX Runtime neither copies nor frees those), so the step and
    analysis sessions run from one in-memory copy. Tensors are matched by file, offset, length,
    dtype and shape (the two graphs name them differently). Keep the holder alive as long as
    its sessions: :func:`create_session` ties it to each session it opens."""

    def __init__(self) -> None:
        self._files: dict[Path, object] = {}  # data file -> read-only np.memmap
        self._values: dict[tuple, tuple] = {}  # tensor key -> (np.ndarray view, OrtValue)

    def initializers(self, model: Path) -> dict[str, object]:
        """Initializer name -> OrtValue, for every external initializer of the ONNX ``model``."""
        import onnx

        proto = onnx.load(str(model), load_external_data=False)
        return {t.name: self._value(Path(model).parent, t, ext) for t in proto.graph.initializer if (ext := external_data(t)) is not None}

    def _value(self, folder: Path, tensor, ext: dict[str, str]):
        import numpy as np
        import onnx
        import onnxruntime as ort

        path = (folder / ext["location"]).resolve()
        offset, length = int(ext.get("offset", 0)), int(ext["length"])
        key = (path, offset, length, tensor.data_type, tuple(tensor.dims))
        if key not in self._values:
            if path not in self._files:
                self._files[path] = np.memmap(path, dtype=np.uint8, mode="r")
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
            if length != dtype.itemsize * int(np.prod(tensor.dims)):
                raise ValueError(f"{path.name}: {tensor.name} {list(tensor.dims)} has {length} bytes, not a {dtype} tensor of that shape")
            array = self._files[path][offset:offset + length].view(dtype).reshape(tuple(tensor.dims))
            self._values[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
        return self._values[key][1]

    @property
    def files(self) -> list[Path]:
        """The data files mapped so far."""
        return list(self._files)

    @property
    def nbytes(self) -> int:
        return sum(key[2] for key in self._values)


_arena_lock = threading.Lock()
_arena_registered = False


def _use_shared_arena(ort, options) -> None:
    """Draw the session's CPU memory from one process-wide arena (registered on first use)
    instead of its own: the step and analysis sessions do not each keep their peak."""
    global _arena_registered
    with _arena_lock:
        if not _arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, None)
            _arena_registered = True
    options.add_session_config_entry("session.use_env_allocators", "1")


def session_config() -> dict[str, str]:
    """ONNX Runtime session config entries every steerc session gets: :data:`SESSION_CONFIG`,
    then ``$STEERC_ORT_CONFIG`` (``key=value;key=value``, for measuring other settings)."""
    entries = dict(SESSION_CONFIG)
    for item in filter(None, os.environ.get("STEERC_ORT_CONFIG", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"STEERC_ORT_CONFIG entries are key=value, got {item!r}")
        entries[key.strip()] = value.strip()
    return entries


def create_session(path: Path, device: str = "cpu", threads: int | None = None, weights: SharedWeights | None = None,
                   shared_arena: bool = False, prepack: bool = True):
    """An ONNX Runtime session on ``device`` ("cpu" or "cuda"). ``weights``: run from those
    shared initializers (prepacking off: a packed copy per session would undo the sharing).
    ``shared_arena`` (CPU): one memory arena for every such session of the process.
    ``prepack``: let kernels keep a pre-packed copy of constant weights (faster MatMul)."""
    ort = require("onnxruntime", "running an engine", "pip install onnxruntime (or steerc[gpu] for CUDA)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(os.environ.get("STEERC_THREADS", "0"))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in session_config().items():
        options.add_session_config_entry(key, value)
    if os.environ.get("STEERC_ORT_PROFILE"):
        options.enable_profiling = True  # tools/profile_step.py: per-node times, aggregated per op type
        options.profile_file_prefix = os.environ["STEERC_ORT_PROFILE"]
    if not prepack or weights is not None:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if weights is not None:
        for name, value in weights.initializers(path).items():
            options.add_initializer(name, value)  # not add_external_initializers: ORT 1.32 copies those
    if shared_arena and device == "cpu":
        _use_shared_arena(ort, options)
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            from steerc.errors import MissingDependencyError

            raise MissingDependencyError(
                f"device 'cuda' needs onnxruntime-gpu with a working CUDA; available providers: {ort.get_available_providers()}: "
                "run `pip install steerc[gpu]` on a machine with an NVIDIA GPU, or use --device cpu"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    session = ort.InferenceSession(str(path), options, providers=providers)
    session._steerc_weights = weights  # the session reads their memory: keep them alive with it
    return session
