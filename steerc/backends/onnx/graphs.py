"""The ONNX backend's build: export the step graph and the analysis graph, then the ONNX passes.

The order is :data:`steerc.passes.onnx.ONNX_PASSES` (only those the settings ask for run):
quantize the step graph, derive the analysis graph from it (or, where it cannot be derived,
export the analysis program, in a forked child beside the step graph's export when there are
two cores: :mod:`steerc.backends.onnx.forked`, quantize it and let it share the step graph's
weights), derive the selector graph from it (``sp.selector_layers`` leading layers; none where
it cannot be derived), rewrite the step graph for in-place KV, make it TensorRT-ready and check it
(``--target tensorrt``: the analysis graph is exported, not derived, made TensorRT-ready too, and
there is no selector graph; a violation in any graph fails the compile; ``trtexec.sh`` is written).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from steerc.atomic import write_text_atomic
from steerc.backends.onnx.export import ANALYSIS_FILE, DATA_FILE, MODEL_FILE, SELECTOR_FILE, export_onnx, op_counts, share_weights
from steerc.backends.onnx.forked import ForkedCall, can_fork
from steerc.errors import EngineError
from steerc.passes.onnx import (ONNX_PASSES, NotDerivableError, OnnxGraph, derive_analysis, derive_selector, make_tensorrt_ready, onnx_passes, quantize_embedding,
                               quantize_weights)
from steerc.passes.onnx.make_tensorrt_ready import tensorrt_ready_file

__all__ = ["TRTEXEC_FILE", "export_graphs"]

log = logging.getLogger(__name__)

TRTEXEC_FILE = "trtexec.sh"


def _export_analysis(sp, folder: Path, settings, quantize: bool) -> Path:
    path = export_onnx(sp.analysis, folder, sp.inputs, sp.analysis_outputs, settings.opset, model_file=ANALYSIS_FILE)
    if quantize:  # deterministic: the same quantized bytes as the step graph's, shared below
        quantize_weights(OnnxGraph(path), settings)
        if quantize_embedding.wanted(settings):
            quantize_embedding(OnnxGraph(path), settings)
    return path


def _tensorrt_target(graph: OnnxGraph, folder: Path, sp, settings, fixes: dict, analysis_fixes: dict | None) -> dict:
    """``--target tensorrt`` after the rewrites: check every ONNX graph of the folder against the
    parser rules (a violation in any fails the compile), write ``trtexec.sh``; returns the manifest
    entry (``graphs``: file -> violations, all 0)."""
    from steerc.backends.tensorrt.check import check_tensorrt
    from steerc.backends.tensorrt.shape_profiles import shape_profiles, trtexec_command

    paths = [graph.path] + [p for p in (graph.analysis_path, graph.selector_path) if p is not None and p.is_file()]
    for path in paths:
        violations = check_tensorrt(path)
        if violations:
            lines = "\n  ".join(str(v) for v in violations[:20])
            raise EngineError(f"the ONNX graph {path.name} breaks {len(violations)} TensorRT parser rule(s):\n  {lines}\n"
                              "compile without --target tensorrt for ONNX Runtime, or report the model")
    profiles = shape_profiles(sp.inputs, settings.max_batch, settings.max_seq_len)
    command = trtexec_command(MODEL_FILE, profiles)
    write_text_atomic(folder / TRTEXEC_FILE, "#!/bin/sh\n# Build a TensorRT plan from this engine's step graph (needs TensorRT >= 10.14 and an NVIDIA GPU).\n"
                      f'cd "$(dirname "$0")"\n{command} "$@"\n')
    os.chmod(folder / TRTEXEC_FILE, 0o755)
    entry = {"profiles": profiles, "trtexec": TRTEXEC_FILE, "command": command, "rewrites": fixes, "violations": 0,
             "graph": MODEL_FILE, "graphs": {p.name: 0 for p in paths},
             "note": "trtexec.sh builds a plan of the step graph; analysis.onnx (context preparation, exported with explicit "
                     "softmax probabilities) meets the same parser rules; no selector graph (selection runs the analysis graph)"}
    if analysis_fixes is not None:
        entry["analysis_rewrites"] = analysis_fixes
    return entry


def export_graphs(sp, folder: Path, settings) -> dict:
    """Write ``model.onnx`` (and ``analysis.onnx`` when ``sp`` has an analysis program) into
    ``folder`` and run the ONNX passes in :data:`~steerc.passes.onnx.ONNX_PASSES` order; the
    analysis graph is made where ``derive_analysis`` stands in it, derived or exported. Returns
    the manifest sections ``backend``, ``weights``, ``kv``, ``attention``, ``kv_cache``, ``logits``, ``tensorrt`` and ``selector`` (the
    ``derive_selector`` report's entry, or None), and the seconds taken (``export_seconds``)."""
    passes = onnx_passes(settings)
    quantize = quantize_weights in passes
    derive = sp.analysis is not None and derive_analysis in passes
    seconds = {"analysis_from": None if sp.analysis is None else "step graph" if derive else "analysis program",
               "parallel": sp.analysis is not None and not derive and can_fork()}
    child = ForkedCall(lambda: _export_analysis(sp, folder, settings, quantize), folder / ".analysis-export.json",
                       "exporting the analysis graph") if seconds["parallel"] else None
    selector_layers = getattr(sp, "selector_layers", 0) if derive_selector in passes else 0
    graph = OnnxGraph(folder / MODEL_FILE, sp.geometry.num_layers, sp.analysis_outputs, folder / ANALYSIS_FILE if sp.analysis is not None else None,
                      selector_layers, folder / SELECTOR_FILE if selector_layers else None,
                      tuple(getattr(sp, "selector_score_layers", ())) if selector_layers else (), getattr(sp, "calibration_ids", ()))
    reports, analysis_fixes = {}, None
    try:
        start = time.perf_counter()
        export_onnx(sp.program, folder, sp.inputs, sp.outputs, settings.opset)
        for onnx_pass in ONNX_PASSES:
            if onnx_pass is derive_analysis:  # the step graph is final here: the analysis graph is made from it or beside it
                seconds["step"] = round(time.perf_counter() - start, 1)
                if sp.analysis is not None:
                    _analysis_graph(sp, graph, folder, settings, derive, quantize, child, seconds)
                    child = None
            elif onnx_pass is derive_selector:
                if settings.target == "tensorrt" and sp.analysis is not None and getattr(sp, "selector_layers", 0):
                    log.info("--target tensorrt: no selector graph (its Attention probabilities output breaks TensorRT's parser rules); "
                             "query selection will run the analysis graph")
                if selector_layers:
                    start_selector = time.perf_counter()
                    try:
                        reports["derive_selector"] = derive_selector(graph, settings)
                    except NotDerivableError as exc:
                        log.warning("selector graph not derivable from the step graph (%s); query selection will run the analysis graph", exc)
                    seconds["selector"] = round(time.perf_counter() - start_selector, 1)
            elif onnx_pass in passes:
                reports[onnx_pass.__name__] = onnx_pass(graph, settings)
                if onnx_pass is make_tensorrt_ready and sp.analysis is not None:  # the analysis graph meets the same rules
                    analysis_fixes = tensorrt_ready_file(graph.analysis_path)
    finally:
        if child is not None:  # the step export failed or was interrupted
            child.cancel()
    kv = reports["kv_in_place"].entry if "kv_in_place" in reports else {"layout": "concat"}
    ready = reports.get("make_tensorrt_ready")
    return {
        "backend": {"name": "onnx", "opset": kv.get("opset", settings.opset), "model": MODEL_FILE, "data": DATA_FILE, "op_counts": op_counts(graph.path)},
        "weights": _weights_entry(reports, settings) if quantize else {"scheme": "full", "dtype": settings.dtype},
        "kv": kv,
        # in place, each row writes after its own last key (kv_in_place's write index): a decode batch may hold rows left-aligned
        "attention": reports["fuse_group_query_attention"].entry if "fuse_group_query_attention" in reports
        else {"op": "Attention", "aligned_rows": "kv_in_place" in reports},
        "kv_cache": reports["quantize_kv_cache"].entry if "quantize_kv_cache" in reports else {"dtype": settings.dtype},
        "logits": reports["keep_last_logits"].entry if "keep_last_logits" in reports else {"positions": "all"},
        "tensorrt": _tensorrt_target(graph, folder, sp, settings, ready.entry, analysis_fixes) if ready is not None else None,
        "selector": reports["derive_selector"].entry if "derive_selector" in reports else None,
        "export_seconds": seconds,
    }


def _weights_entry(reports: dict, settings) -> dict:
    """The manifest's ``weights``: the ``quantize_weights`` entry, with ``embedding`` (the
    ``quantize_embedding`` entry) and the weight file's final size where the token table was quantized."""
    entry = dict(reports["quantize_weights"].entry)
    if "quantize_embedding" in reports:
        entry["embedding"] = reports["quantize_embedding"].entry
        entry["data_bytes_after"] = entry["embedding"]["data_bytes_after"]
    return entry


def _analysis_graph(sp, graph: OnnxGraph, folder: Path, settings, derive: bool, quantize: bool, child, seconds: dict) -> None:
    """``analysis.onnx``: derived from the step graph (the ``derive_analysis`` pass), else exported
    from the analysis program (joined from the forked child when it runs there), quantized like
    the step graph and sharing its weight file."""
    start = time.perf_counter()
    if derive:
        try:
            derive_analysis(graph, settings)
            seconds["analysis"] = round(time.perf_counter() - start, 1)
            return
        except NotDerivableError as exc:
            log.warning("analysis graph not derivable from the step graph (%s); exporting the analysis program", exc)
            seconds["analysis_from"] = "analysis program"
    if child is not None:
        seconds["analysis"] = round(child.join(), 1)
    else:
        _export_analysis(sp, folder, settings, quantize)
        seconds["analysis"] = round(time.perf_counter() - start, 1)
    share_weights(folder / ANALYSIS_FILE, folder / MODEL_FILE)
