"""ONNX export: ``torch.onnx.export(dynamo=True)`` of a rewritten program, and its weight files.

Opset 23 is the default, chosen by measurement (``tools/bench_opset.py``, numbers in
``docs/BENCHMARKS.md``): attention stays one fused ``Attention`` op that carries the merged
causal + padding + steering mask, and RMSNorm / rotary stay fused too, so the graph is
much smaller than the decomposed opset-20 graph.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from steerc.capture.io_spec import TensorSpec
from steerc.errors import require

__all__ = ["export_onnx", "share_weights", "op_counts", "external_data", "MODEL_FILE", "DATA_FILE", "ANALYSIS_FILE", "SELECTOR_FILE"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
ANALYSIS_FILE = "analysis.onnx"  # the analysis graph; its weights are read from DATA_FILE
SELECTOR_FILE = "selector.onnx"  # the selector graph (steerc.passes.onnx.derive_selector); weights from DATA_FILE too


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


def external_data(tensor) -> dict[str, str] | None:
    """An initializer's external-data entries (location, offset, length), or None when stored inline."""
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
            ext = external_data(tensor)
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
    by_digest = {theirs[t.name]: external_data(t) for t in main_proto.graph.initializer if t.name in theirs}
    own_files = {external_data(t)["location"] for t in proto.graph.initializer if t.name in mine}
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
