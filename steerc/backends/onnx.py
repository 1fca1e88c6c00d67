"""ONNX backend: ``torch.onnx.export(dynamo=True)`` of a rewritten program.

Opset 23 is the default, chosen by measurement (``tools/bench_opset.py``, numbers in
``docs/BENCHMARKS.md``): attention stays one fused ``Attention`` op that carries the merged
causal + padding + steering mask, and RMSNorm / rotary stay fused too, so the graph is
much smaller than the decomposed opset-20 graph.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from pathlib import Path

from steerc.capture.io_spec import TensorSpec
from steerc.errors import require

__all__ = ["export_onnx", "share_weights", "op_counts", "create_session", "SharedWeights", "PREPACK_ONLY_OPS", "MODEL_FILE", "DATA_FILE", "ANALYSIS_FILE"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
ANALYSIS_FILE = "analysis.onnx"  # the analysis graph; its weights are read from DATA_FILE
# Ops (as ``op_counts`` names them) whose CPU kernels need their weights pre-packed: unpacked,
# MatMulNBits dequantizes its weights on every call (a decode step ~7x slower on SmolLM2 int4).
PREPACK_ONLY_OPS = ("com.microsoft::MatMulNBits",)


def _name_dims(model, specs: list[TensorSpec], values) -> None:
    by_name = {s.name: s for s in specs}
    for value in values:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.dims):
            raise RuntimeError(f"ONNX {value.name} has rank {len(dims)}, expected {len(spec.dims)}")
        for dim, want in zip(dims, spec.dims):
            if isinstance(want, str):
                dim.dim_param = want
            elif dim.HasField("dim_value") and dim.dim_value != want:
                raise RuntimeError(f"ONNX {value.name} has a dimension {dim.dim_value}, expected {want}")


def export_onnx(program, folder: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], opset: int, model_file: str = MODEL_FILE) -> Path:
    """Write ``folder/model_file`` (+ ``model_file.data``) from an ExportedProgram whose user
    inputs/outputs are in the order of ``inputs``/``outputs``; names dims after the specs and
    runs ``onnx.checker``. Returns the model path."""
    import torch

    onnx = require("onnx", "the ONNX backend")
    require("onnxscript", "the ONNX backend")
    path = Path(folder) / model_file
    torch.onnx.export(
        program,
        f=str(path),
        dynamo=True,
        opset_version=opset,
        external_data=True,
        input_names=[s.name for s in inputs],
        output_names=[s.name for s in outputs],
        verbose=False,
        optimize=True,
    )
    proto = onnx.load(str(path), load_external_data=False)
    _name_dims(proto, inputs, proto.graph.input)
    _name_dims(proto, outputs, proto.graph.output)
    got_out = [v.name for v in proto.graph.output]
    if got_out != [s.name for s in outputs]:
        raise RuntimeError(f"ONNX outputs {got_out} differ from the engine contract {[s.name for s in outputs]}")
    got_in = [v.name for v in proto.graph.input]
    if got_in != [s.name for s in inputs]:
        raise RuntimeError(f"ONNX inputs {got_in} differ from the engine contract {[s.name for s in inputs]}")
    onnx.save_model(proto, str(path))  # proto only: the weights stay in model.onnx.data
    onnx.checker.check_model(str(path))
    return path


def _external(tensor) -> dict[str, str] | None:
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in tensor.external_data}


def _blob_digests(folder: Path, model) -> dict[str, tuple]:
    """Initializer name -> (dtype, dims, sha256 of its bytes), for every external initializer."""
    import hashlib

    out = {}
    handles: dict[str, object] = {}
    try:
        for tensor in model.graph.initializer:
            ext = _external(tensor)
            if ext is None:
                continue
            if ext["location"] not in handles:
                handles[ext["location"]] = open(Path(folder) / ext["location"], "rb")
            fh = handles[ext["location"]]
            fh.seek(int(ext.get("offset", 0)))
            out[tensor.name] = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(fh.read(int(ext["length"]))).hexdigest())
    finally:
        for fh in handles.values():
            fh.close()
    return out


def share_weights(path: Path, main: Path) -> int:
    """Point every external initializer of the ONNX model at ``path`` to the identical bytes in
    ``main``'s data file (matched by dtype, shape and sha256, never by name), then delete
    ``path``'s own data file. Two graphs of one engine thus share one copy of the weights on
    disk. Raises if a weight of ``path`` has no identical counterpart. Returns how many were
    relinked."""
    import onnx

    path, main = Path(path), Path(main)
    if path.parent != main.parent:
        raise ValueError(f"{path} and {main} must be in one folder to share weights")
    proto = onnx.load(str(path), load_external_data=False)
    main_proto = onnx.load(str(main), load_external_data=False)
    mine = _blob_digests(path.parent, proto)
    theirs = _blob_digests(main.parent, main_proto)
    by_digest = {theirs[t.name]: _external(t) for t in main_proto.graph.initializer if t.name in theirs}
    own_files = {_external(t)["location"] for t in proto.graph.initializer if t.name in mine}
    for tensor in proto.graph.initializer:
        if tensor.name not in mine:
            continue
        target = by_digest.get(mine[tensor.name])
        if target is None:
            raise RuntimeError(f"{path.name}: weight {tensor.name} {list(tensor.dims)} has no identical copy in {main.name}; cannot share weights")
        del tensor.external_data[:]
        for key, value in target.items():
            tensor.external_data.add(key=key, value=value)
    onnx.save_model(proto, str(path))
    for name in own_files - {e["location"] for e in by_digest.values()}:
        (path.parent / name).unlink(missing_ok=True)
    onnx.checker.check_model(str(path))
    return len(mine)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    return dict(sorted(counts.items()))


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
        return {t.name: self._value(Path(model).parent, t, ext) for t in proto.graph.initializer if (ext := _external(t)) is not None}

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
