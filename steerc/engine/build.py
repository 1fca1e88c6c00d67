"""``compile_engine``: model spec -> verified engine folder, atomically.

Stages: load, capture, rewrite, export, verify, write. Everything is built in a hidden
temporary folder beside the target and renamed into place at the end, so a failure or an
interrupt never leaves a half-written engine (and ``--force`` replaces an old one only
once the new one is complete).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import steerc
from steerc.atomic import install_folder, write_text_atomic
from steerc.backends.derive_analysis import derive_analysis_graph
from steerc.backends.onnx import ANALYSIS_FILE, DATA_FILE, MODEL_FILE, create_session, export_onnx, op_counts, share_weights
from steerc.compiler import capture_steerable
from steerc.engine.forked import ForkedCall, can_fork
from steerc.engine.genai_config import genai_config
from steerc.engine.manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, write_json_atomic, write_manifest
from steerc.engine.verify import WEIGHT_TOLERANCE, importance_check, queries_check, self_check
from steerc.errors import EngineError, require
from steerc.models import load_model
from steerc.progress import StageTracker
from steerc.settings import CompileSettings

__all__ = ["compile_engine", "TRTEXEC_FILE"]

TRTEXEC_FILE = "trtexec.sh"

log = logging.getLogger(__name__)


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EngineError(f"output path {out_dir} exists and is not a folder; choose another -o")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise EngineError(f"output folder {out_dir} already exists; pass --force to replace it, or choose another -o")
    if out_dir.exists() and force and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise EngineError(f"{out_dir} is not empty and is not a steerc engine; refusing to replace it even with --force")


def _tensorrt_target(model_path: Path, folder: Path, sp, settings: CompileSettings) -> dict:
    """``--target tensorrt``: rewrite the step graph to the TensorRT parser's rules, check them
    (a violation fails the compile), write ``trtexec.sh``; returns the manifest entry."""
    from steerc.tensorrt.check import check_tensorrt
    from steerc.tensorrt.profiles import optimization_profiles, trtexec_command
    from steerc.tensorrt.ready import make_tensorrt_ready

    fixes = make_tensorrt_ready(model_path)
    violations = check_tensorrt(model_path)
    if violations:
        lines = "\n  ".join(str(v) for v in violations[:20])
        raise EngineError(f"the ONNX graph breaks {len(violations)} TensorRT parser rule(s):\n  {lines}\n"
                          "compile without --target tensorrt for ONNX Runtime, or report the model")
    profiles = optimization_profiles(sp.inputs, settings.max_batch, settings.max_seq_len)
    command = trtexec_command(MODEL_FILE, profiles)
    write_text_atomic(folder / TRTEXEC_FILE, "#!/bin/sh\n# Build a TensorRT plan from this engine's step graph (needs TensorRT >= 10.14 and an NVIDIA GPU).\n"
                      f'cd "$(dirname "$0")"\n{command} "$@"\n')
    os.chmod(folder / TRTEXEC_FILE, 0o755)
    return {"profiles": profiles, "trtexec": TRTEXEC_FILE, "command": command, "rewrites": fixes, "violations": 0,
            "graph": MODEL_FILE, "note": "only the step graph is meant for TensorRT; analysis.onnx (context preparation) stays on ONNX Runtime"}


def _backend_session(folder: Path, name: str, entry: dict, sp):
    """A runtime session over the compiled form ``name`` just built into ``folder``."""
    contract = {"backends": {name: entry}, "inputs": [x.to_dict() for x in sp.inputs], "outputs": [x.to_dict() for x in sp.outputs]}
    if name == "aoti":
        from steerc.backends.aoti import aoti_session

        return aoti_session(folder, contract, entry["device"])
    from steerc.backends.tensorrt import tensorrt_session

    return tensorrt_session(folder, contract, "cuda")


def _quantize(path: Path, settings: CompileSettings) -> dict:
    """``--weights int8|int4``: MatMulNBits weights in ``path``; the manifest entry."""
    if settings.weights == "full":
        return {"scheme": "full", "dtype": settings.dtype}
    from steerc.backends.quantize import quantize_weights

    return quantize_weights(path, settings.weights, settings.weight_block, settings.weight_symmetric, settings.resolved_weight_method)


def _export_analysis(sp, tmp: Path, settings: CompileSettings) -> Path:
    path = export_onnx(sp.analysis, tmp, sp.inputs, sp.analysis_outputs, settings.opset, model_file=ANALYSIS_FILE)
    _quantize(path, settings)  # deterministic: the same quantized bytes as the step graph's, shared below
    return path


def _export_graphs(sp, tmp: Path, settings: CompileSettings) -> tuple[Path, Path | None, dict, dict]:
    """Export (and quantize) the step graph, then the analysis graph: derived from the step graph
    at the ONNX level where every layer has its own fused Attention node (seconds, see
    :mod:`steerc.backends.derive_analysis`), else exported from the analysis program, in a
    forked child beside the step graph's export when there are two cores (see
    :mod:`steerc.engine.forked`). Returns both paths, the weights entry and the seconds taken."""
    derive = sp.analysis is not None and sp.share_attention is None and settings.attn_implementation == "sdpa"
    seconds = {"analysis_from": None if sp.analysis is None else "step graph" if derive else "analysis program",
               "parallel": sp.analysis is not None and not derive and can_fork()}
    child = ForkedCall(lambda: _export_analysis(sp, tmp, settings), tmp / ".analysis-export.json", "exporting the analysis graph") if seconds["parallel"] else None
    try:
        start = time.perf_counter()
        model_path = export_onnx(sp.program, tmp, sp.inputs, sp.outputs, settings.opset)
        weights = _quantize(model_path, settings)
        seconds["step"] = round(time.perf_counter() - start, 1)
        if sp.analysis is None:
            return model_path, None, weights, seconds
        start = time.perf_counter()
        analysis_path = tmp / ANALYSIS_FILE
        why = derive_analysis_graph(model_path, analysis_path, sp.geometry.num_layers, sp.analysis_outputs) if derive else "not tried"
        if why is None:
            seconds["analysis"] = round(time.perf_counter() - start, 1)
            return model_path, analysis_path, weights, seconds
        if derive:
            log.warning("analysis graph not derivable from the step graph (%s); exporting the analysis program", why)
            seconds["analysis_from"] = "analysis program"
        if child is not None:
            seconds["analysis"] = round(child.join(), 1)
            child = None
        else:
            _export_analysis(sp, tmp, settings)
            seconds["analysis"] = round(time.perf_counter() - start, 1)
        share_weights(analysis_path, model_path)
    finally:
        if child is not None:  # the step export failed or was interrupted
            child.cancel()
    return model_path, analysis_path, weights, seconds


def _kv_layout(model_path: Path, settings: CompileSettings) -> dict:
    """``--kv in-place``: rewrite the step graph to write into preallocated KV buffers (the
    analysis graph keeps the concat layout); the manifest entry."""
    if settings.kv == "concat":
        return {"layout": "concat"}
    from steerc.backends.kv_in_place import CAPACITY_DIM, kv_in_place_file

    return {**kv_in_place_file(model_path), "capacity_dim": CAPACITY_DIM,
            "meaning": f"past_key_values.* are buffers [B, Hkv, {CAPACITY_DIM}, D] whose first P = attention_mask.shape[1] - input_ids.shape[1] "
            "positions hold the cache; present.* are the same buffers with the S new positions written at P (bind one OrtValue as both "
            "to update it in place); attention_mask and steer_bias still cover P+S keys. analysis.onnx keeps the concat layout"}


def _step_specs(specs, settings: CompileSettings) -> list:
    if settings.kv == "concat":
        return specs
    from steerc.backends.kv_in_place import in_place_specs

    return in_place_specs(specs)


def _verify_session(model_path: Path, settings: CompileSettings):
    """The ONNX Runtime session the self-check runs (an in-place graph behind the concat
    contract), or a one-line reason it cannot open one."""
    try:
        session = create_session(model_path)
        if settings.kv == "in-place":
            from steerc.runtime.kv_buffers import InPlaceSession

            session = InPlaceSession(session)
        return session
    except Exception as exc:
        if "onnxruntime" not in type(exc).__module__ and "ONNXRuntime" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0][:240]
        raise EngineError(f"ONNX Runtime's CPU provider cannot load the {settings.dtype} graph for the self-check ({first}); compile with --dtype fp32 "
                          "(valid with --target tensorrt too), or pass --no-verify to write it unchecked") from None


def compile_engine(model: str | None, out_dir: str | Path, settings: CompileSettings | None = None, force: bool = False, tracker: StageTracker | None = None) -> dict:
    """Compile ``model`` (see :func:`steerc.models.resolve_model`) into ``out_dir``; returns the manifest."""
    settings = settings or CompileSettings()
    tracker = tracker or StageTracker()
    out_dir = Path(out_dir).expanduser().absolute()
    _check_target(out_dir, force)
    # Fail before minutes of loading and capture, not at the export stage.
    for module in ("onnx", "onnxscript") + (("onnxruntime",) if settings.verify else ()):
        require(module, "the ONNX backend")
    if settings.backend == "torch-tensorrt":
        from steerc.backends.tensorrt import require_tensorrt

        require_tensorrt()
    if settings.backend == "aoti" and settings.device == "cuda":
        from steerc.backends.aoti import require_cuda

        require_cuda()
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    with tracker.stage("load"):
        loaded = load_model(model, settings.dtype, settings.attn_implementation)
    sp = capture_steerable(loaded.model, settings, on_stage=tracker.stage)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    try:
        with tracker.stage("export"):
            model_path, analysis_path, weights, export_seconds = _export_graphs(sp, tmp, settings)
            kv = _kv_layout(model_path, settings)  # after the analysis graph is derived: it keeps the concat layout
            counts = op_counts(model_path)
            tensorrt = _tensorrt_target(model_path, tmp, sp, settings) if settings.target == "tensorrt" else None
        backends = {}
        # After the ONNX export: building for CUDA moves sp.program's weights to the GPU in place.
        if settings.backend == "aoti":
            with tracker.stage("aoti"):
                from steerc.backends.aoti import build_aoti_package

                backends["aoti"] = build_aoti_package(sp.program, tmp, sp.geometry, sp.inputs, settings.device)
        elif settings.backend == "torch-tensorrt":
            with tracker.stage("tensorrt"):
                from steerc.backends.tensorrt import build_tensorrt_plan

                backends["tensorrt"] = build_tensorrt_plan(sp.program, tmp, sp.geometry, sp.inputs, settings, outputs=sp.outputs)
        with tracker.stage("verify"):
            if not settings.verify:
                check = {"skipped": "--no-verify"}
            elif settings.dtype == "bf16":
                check = {"skipped": "ONNX Runtime's CPU provider has no bfloat16 MatMul; verify bf16 engines on CUDA"}
                log.warning("bf16 engine written without the ONNX Runtime self-check (%s)", check["skipped"])
            else:
                groups = settings.share_attention  # shared attention: checked against reference_shared_step
                tol = WEIGHT_TOLERANCE.get(settings.weights)  # a quantized engine against the full-precision reference
                check = self_check(_verify_session(model_path, settings), loaded.model, sp.geometry, sp.inputs, settings.dtype, groups=groups, tolerance=tol)
                if analysis_path is not None:
                    analysis_session = create_session(analysis_path)
                    check["importance"] = importance_check(analysis_session, loaded.model, sp.geometry, sp.inputs, settings.dtype, groups=groups, tolerance=tol)
                    if any(s.name == "attn_queries" for s in sp.analysis_outputs):
                        check["queries"] = queries_check(analysis_session, loaded.model, sp.geometry, sp.inputs, settings.dtype, groups=groups, tolerance=tol)
                for name, entry in backends.items():  # each compiled form against the same eager reference
                    check[name] = self_check(_backend_session(tmp, name, entry, sp), loaded.model, sp.geometry, sp.inputs, settings.dtype,
                                             groups=groups, what=f"the {name} backend ({entry.get('package') or entry.get('plan')})")
        with tracker.stage("write"):
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(tmp)
            loaded.model.config.save_pretrained(tmp)
            if getattr(loaded.model, "generation_config", None) is not None:
                loaded.model.generation_config.save_pretrained(tmp)
            if sp.share_attention is None and settings.kv == "concat":
                write_json_atomic(tmp / "genai_config.json", genai_config(loaded.model.config, sp.geometry, settings.max_seq_len, MODEL_FILE))
            dropped = sp.program.graph_module.meta.get("steerc_dropped_asserts", [])
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "steerc_version": steerc.__version__,
                "source": {**loaded.source.to_dict(), "sha256": loaded.sha256},
                "architecture": sp.architecture,
                "model_type": loaded.model.config.model_type,
                "geometry": sp.geometry.to_dict(),
                "dtype": settings.dtype,
                "max_seq_len": settings.max_seq_len,
                "max_batch": settings.max_batch,
                "settings": settings.to_dict(),
                "backend": {"name": "onnx", "opset": kv.get("opset", settings.opset), "model": MODEL_FILE, "data": DATA_FILE, "op_counts": counts},
                # compiled forms of the same program beside the ONNX engine: {"aoti": {...}} / {"tensorrt": {...}}
                "backends": backends,
                "weights": weights,
                "tensorrt": tensorrt,
                "analysis": None if analysis_path is None else {
                    "model": ANALYSIS_FILE,
                    "data": DATA_FILE,
                    "outputs": [s.to_dict() for s in sp.analysis_outputs],
                    "passes": [r.to_dict() for r in sp.analysis_reports],
                    "meaning": "attn_importance[b, l, h, t]: attention probability key t receives in layer l, query head h, "
                    "summed over the real query rows of the call (steering bias included); chunks of one prefill add up",
                },
                "kv": kv,
                "inputs": [s.to_dict() for s in _step_specs(sp.inputs, settings)],
                "outputs": [s.to_dict() for s in _step_specs(sp.outputs, settings)],
                "steering": {
                    "input": "steer_bias",
                    "dims": ["batch_size", "num_layers", "num_heads", "total_sequence_length"],
                    "meaning": "additive bias on attention logits (log space) over key positions, per layer and query head, "
                    "broadcast over query rows; 0 = unsteered, log(alpha) down-weights a key by alpha",
                },
                "passes": [r.to_dict() for r in sp.reports],
                "share_attention": None if sp.share_attention is None else {
                    "groups": sp.share_attention["groups"],
                    "shared_layers": sp.share_attention["shared_layers"],
                    "meaning": "Shared Attention (arXiv 2407.12866): each later layer of a group uses the first layer's attention probabilities "
                    "(steering included: a shared layer's steer_bias row has no effect) with its own values; shared layers have no "
                    "past_key_values.{i}.key input and no present.{i}.key output",
                    "genai_config": "not written: onnxruntime-genai expects a key cache for every layer",
                    "analysis_passes_skipped": list(sp.analysis.graph_module.meta.get("steerc_skipped_passes", [])) if sp.analysis is not None else [],
                },
                "capture": {"dropped_shape_asserts": len(dropped)},
                "tokenizer": loaded.tokenizer is not None,
                "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
                "verify": check,
                "compile_seconds": {**tracker.timings, "export_graphs": export_seconds},
            }
            manifest = write_manifest(tmp, manifest)
        install_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("engine written to %s", out_dir)
    return manifest
