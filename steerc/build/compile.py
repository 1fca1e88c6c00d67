"""``compile_engine``: model spec -> verified engine folder, atomically.

Stages: load, capture, rewrite, export (the ONNX backend: :mod:`steerc.backends.onnx.graphs`),
the chosen compiled backend's own stage (``--backend aoti|tensorrt``), verify, write. Everything
is built in a hidden temporary folder beside the target and renamed into place at the end, so a
failure or an interrupt never leaves a half-written engine (and ``--force`` replaces an old one
only once the new one is complete).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import steerc
from steerc.atomic import install_folder
from steerc.backends import ENGINE_BACKEND, get_backend
from steerc.backends.onnx import ANALYSIS_FILE, MODEL_FILE, SELECTOR_FILE, create_session
from steerc.build.genai_config import genai_config
from steerc.build.steerable import capture_steerable
from steerc.build.verify import KV_CACHE_TOLERANCE, WEIGHT_TOLERANCE, importance_check, queries_check, selector_check, self_check
from steerc.engine_format import FORMAT, FORMAT_VERSION, MANIFEST_FILE, write_json_atomic, write_manifest
from steerc.errors import EngineError, MissingDependencyError, require
from steerc.build.memory_estimate import check_compile_memory, skip_requested
from steerc.models import load_config, load_model, resolve_model
from steerc.models.windows import sliding_window
from steerc.progress import StageTracker
from steerc.settings import CompileSettings

__all__ = ["compile_engine"]

log = logging.getLogger(__name__)


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EngineError(f"output path {out_dir} exists and is not a folder; choose another -o")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise EngineError(f"output folder {out_dir} already exists; pass --force to replace it, or choose another -o")
    if out_dir.exists() and force and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise EngineError(f"{out_dir} is not empty and is not a steerc engine; refusing to replace it even with --force")


def _backend_session(folder: Path, name: str, entry: dict, sp):
    """A runtime session over the compiled form ``name`` just built into ``folder``."""
    contract = {"backends": {name: entry}, "inputs": [x.to_dict() for x in sp.inputs], "outputs": [x.to_dict() for x in sp.outputs]}
    return get_backend(name).open_session(folder, contract, entry["device"])


def _last_logits(specs, logits: dict) -> list:
    """``specs`` with ``logits`` of one position where the ``keep_last_logits`` pass ran (the manifest's ``logits``)."""
    from steerc.capture.io_spec import TensorSpec

    if logits.get("positions") != "last":
        return list(specs)
    return [TensorSpec(s.name, s.dtype, (s.dims[0], 1, *s.dims[2:])) if s.name == "logits" else s for s in specs]


def _step_specs(specs, settings: CompileSettings) -> list:
    if settings.kv == "concat":
        return specs
    from steerc.capture.io_spec import TensorSpec
    from steerc.passes.onnx.kv_in_place import in_place_specs

    specs = in_place_specs(specs)
    if settings.kv_cache == "int8":  # the buffers' element type (the runtime's KVCache stays float32)
        specs = [TensorSpec(s.name, "int8", s.dims) if s.name.startswith(("past_key_values.", "present.")) else s for s in specs]
    return specs


def _attention_entry(entry: dict, config) -> dict:
    """The manifest's ``attention``: the step graph's attention op and whether a decode batch may
    hold its rows left-aligned (``aligned_rows``: the in-place graph writes each row after its own
    keys, and no layer's sliding window is placed from the batch's width instead of the row's)."""
    if not entry.get("aligned_rows"):
        return entry
    window = sliding_window(config)
    if window is None:
        return entry
    return {**entry, "aligned_rows": False, "aligned_rows_off": f"sliding window of {window} positions: its mask is placed by the batch's width"}


def _verify_session(model_path: Path, settings: CompileSettings):
    """The ONNX Runtime session the self-check runs (an in-place graph behind the concat
    contract), or a one-line reason it cannot open one."""
    try:
        session = create_session(model_path)
        if settings.kv == "in-place":
            from steerc.runtime.kv_buffers import InPlaceSession

            scales = None
            if settings.kv_cache == "int8":
                from steerc.passes.onnx.quantize_kv_cache import load_kv_scales

                scales = load_kv_scales(model_path.parent, len([i for i in session.get_inputs() if i.name.startswith("past_key_values.")]) // 2)
            session = InPlaceSession(session, rows_apart=settings.attention_op == "group-query", scales=scales)
        return session
    except Exception as exc:
        if "onnxruntime" not in type(exc).__module__ and "ONNXRuntime" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0][:240]
        raise EngineError(f"ONNX Runtime's CPU provider cannot load the {settings.dtype} graph for the self-check ({first}); compile with --dtype fp32 "
                          "(valid with --target tensorrt too), or pass --no-verify to write it unchecked") from None


def compile_engine(model: str | None, out_dir: str | Path, settings: CompileSettings | None = None, force: bool = False, tracker: StageTracker | None = None,
                   memory_check: bool = True) -> dict:
    """Compile ``model`` (see :func:`steerc.models.resolve_model`) into ``out_dir``; returns the manifest.
    ``memory_check``: refuse, before loading anything, a compile whose estimated peak memory
    exceeds what is available (:mod:`steerc.build.memory_estimate`; ``STEERC_SKIP_MEMORY_CHECK=1``
    turns it off too)."""
    settings = settings or CompileSettings()
    tracker = tracker or StageTracker()
    out_dir = Path(out_dir).expanduser().absolute()
    _check_target(out_dir, force)
    # Fail before minutes of loading and capture, not at the export stage.
    engine_backend, backend = get_backend(ENGINE_BACKEND), get_backend(settings.backend)
    for chosen in (engine_backend, backend):
        reason = chosen.available(settings.device)
        if reason:
            raise MissingDependencyError(reason)
        if chosen is engine_backend and settings.verify:
            require("onnxruntime", "the ONNX backend")
    source = resolve_model(model)
    if memory_check and not skip_requested():  # from the config alone: before minutes of loading, not an OOM kill midway
        check_compile_memory(load_config(source), settings)
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    with tracker.stage("load"):
        loaded = load_model(source, settings.dtype, settings.attn_implementation)
    sp = capture_steerable(loaded.model, settings, on_stage=tracker.stage)
    selector_source = None
    if sp.analysis is not None:  # the selector graph covers the layers up to the last default selector head
        from steerc.steering.profiles import default_selector

        pairs, selector_source = default_selector(loaded.sha256, sp.geometry.num_layers, sp.geometry.num_heads)
        sp.selector_layers = max(layer for layer, _ in pairs) + 1
        sp.selector_score_layers = tuple(sorted({layer for layer, _ in pairs}))

    if settings.kv_cache == "int8":  # the int8 KV cache's scales are calibrated on a prefill of these tokens (quantize_kv_cache)
        from steerc.passes.onnx.quantize_kv_cache import calibration_ids

        sp.calibration_ids = calibration_ids(loaded.tokenizer, sp.geometry.vocab_size)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    try:
        with tracker.stage("export"):
            onnx = engine_backend.build(sp, tmp, settings)
            export_seconds = onnx.pop("export_seconds")
            logits = onnx.pop("logits", {"positions": "all"})
        model_path = tmp / MODEL_FILE
        analysis_path = tmp / ANALYSIS_FILE if sp.analysis is not None else None
        selector = onnx.pop("selector")
        backends = {}
        # After the ONNX export: building for CUDA moves sp.program's weights to the GPU in place.
        if backend.stage is not None:  # a compiled form beside the ONNX engine
            with tracker.stage(backend.stage):
                backends[backend.name] = backend.build(sp, tmp, settings)
        with tracker.stage("verify"):
            if not settings.verify:
                check = {"skipped": "--no-verify"}
            elif settings.dtype == "bf16":
                check = {"skipped": "ONNX Runtime's CPU provider has no bfloat16 MatMul; verify bf16 engines on CUDA"}
                log.warning("bf16 engine written without the ONNX Runtime self-check (%s)", check["skipped"])
            else:
                groups = settings.share_attention  # shared attention: checked against reference_shared_step
                tol = WEIGHT_TOLERANCE.get(settings.weights)  # a quantized engine against the full-precision reference
                if settings.kv_cache == "int8":  # and an int8 KV cache: its rounding on top
                    tol = (tol or 0.0) + KV_CACHE_TOLERANCE
                check = self_check(_verify_session(model_path, settings), loaded.model, sp.geometry, sp.inputs, settings.dtype, groups=groups, tolerance=tol)
                if analysis_path is not None:
                    analysis_session = create_session(analysis_path)
                    check["importance"] = importance_check(analysis_session, loaded.model, sp.geometry, sp.inputs, settings.dtype, groups=groups, tolerance=tol)
                    if any(s.name == "attn_queries" for s in sp.analysis_outputs):
                        check["queries"] = queries_check(analysis_session, loaded.model, sp.geometry, sp.inputs, settings.dtype, groups=groups, tolerance=tol)
                    if selector is not None:  # against the analysis graph just checked
                        check["selector"] = selector_check(create_session(tmp / SELECTOR_FILE), analysis_session, sp.geometry, sp.inputs, settings.dtype,
                                                           selector["score_layers"])
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
                "backend": onnx["backend"],
                # compiled forms of the same program beside the ONNX engine: {"aoti": {...}} / {"tensorrt": {...}}
                "backends": backends,
                "weights": onnx["weights"],
                "tensorrt": onnx["tensorrt"],
                "analysis": None if analysis_path is None else {
                    "model": ANALYSIS_FILE,
                    "data": onnx["backend"]["data"],
                    "outputs": [s.to_dict() for s in (_last_logits(sp.analysis_outputs, logits)
                                                      if export_seconds["analysis_from"] == "step graph" else sp.analysis_outputs)],
                    "passes": [r.to_dict() for r in sp.analysis_reports],
                    "meaning": "attn_importance[b, l, h, t]: attention probability key t receives in layer l, query head h, "
                    "summed over the real query rows of the call (steering bias included); chunks of one prefill add up",
                },
                "selector": None if selector is None else {
                    "model": SELECTOR_FILE,
                    "data": onnx["backend"]["data"],
                    "layers": selector["layers"],
                    "score_layers": selector["score_layers"],
                    "heads_from": selector_source,
                    "outputs": [{"name": "selector_scores", "dtype": "float32",
                                 "dims": ["batch_size", len(selector["score_layers"]), sp.geometry.num_heads, "total_sequence_length"]}],
                    "meaning": "selector_scores[b, i, h, t] = attn_importance[b, score_layers[i], h, t]: the step graph cut after layer "
                    "layers - 1's attention, only the score layers (those holding a selector head) return their attention, no logits or KV; "
                    "the query method's selection runs it when its selector heads lie in the score layers",
                },
                "kv": onnx["kv"],
                "attention": _attention_entry(onnx["attention"], loaded.model.config),
                "kv_cache": onnx["kv_cache"],
                "inputs": [s.to_dict() for s in _step_specs(sp.inputs, settings)],
                "outputs": [s.to_dict() for s in _step_specs(_last_logits(sp.outputs, logits), settings)],
                "logits": logits,
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
