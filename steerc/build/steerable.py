"""Model -> steerable program: capture, then the graph passes in ``steerc.passes.PASSES`` (the first stages of a compile)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

from steerc.capture import CaptureShapes, DecoderGeometry, TensorSpec, capture_decoder_step, decoder_inputs, decoder_outputs, importance_output, queries_output, rebuild_program
from steerc.errors import PassError, UnsupportedArchitectureError
from steerc.passes import ANALYSIS_PASSES, PASSES, PassReport
from steerc.passes.share_attention import SHARED_META
from steerc.settings import CompileSettings

__all__ = ["SteerableProgram", "capture_steerable", "architecture_name", "TORCH_TO_ONNX_DTYPE"]

log = logging.getLogger(__name__)

TORCH_TO_ONNX_DTYPE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class SteerableProgram:
    """A rewritten ExportedProgram and the contract of its inputs and outputs."""

    program: torch.export.ExportedProgram
    geometry: DecoderGeometry
    architecture: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reports: list[PassReport] = field(default_factory=list)
    # The analysis graph (ANALYSIS_PASSES applied to a copy): same inputs, outputs plus attn_importance.
    analysis: torch.export.ExportedProgram | None = None
    analysis_outputs: list[TensorSpec] = field(default_factory=list)
    analysis_reports: list[PassReport] = field(default_factory=list)
    # {"groups": [[f, ..., g], ...], "shared_layers": [...]} when compiled with shared attention, else None
    share_attention: dict | None = None
    # Layers 0..n-1 the selector graph covers (steerc.passes.onnx.derive_selector); 0: no selector graph.
    selector_layers: int = 0
    # Of those, the layers whose attention it outputs (those holding a selector head); empty: every covered layer.
    selector_score_layers: tuple[int, ...] = ()

    @property
    def keyless_layers(self) -> tuple[int, ...]:
        """Layers whose key cache the engine does not keep (shared attention)."""
        return tuple(self.share_attention["shared_layers"]) if self.share_attention else ()


def architecture_name(model) -> str:
    archs = getattr(model.config, "architectures", None)
    return archs[0] if archs else type(model).__name__


def capture_steerable(model, settings: CompileSettings, on_stage=None) -> SteerableProgram:
    """Capture ``model`` (already in the target dtype and attention implementation) and apply
    every pass. ``on_stage(name)`` returns a context manager that brackets each stage."""
    import contextlib

    stage = on_stage or (lambda name: contextlib.nullcontext())
    arch = architecture_name(model)
    geometry = DecoderGeometry.from_config(model.config)
    kv_dtype = TORCH_TO_ONNX_DTYPE[next(model.parameters()).dtype]
    base_inputs = decoder_inputs(geometry, kv_dtype, with_bias=False)
    with stage("capture"):
        try:
            ep = capture_decoder_step(model, geometry, base_inputs, CaptureShapes(settings.max_batch, settings.max_seq_len))
        except Exception as exc:  # torch.export raises many kinds; the first line says what
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedArchitectureError(f"{arch}: torch.export could not capture a decoder step ({type(exc).__name__}: {first}); rerun with --debug for details") from exc
    with stage("rewrite"):
        attn = model.config._attn_implementation
        options = {"share_attention": {"groups": settings.share_attention}}  # per-pass arguments of for_model
        reports = _apply(PASSES, ep.graph_module, geometry, arch, attn, options)
        program = rebuild_program(ep)
        analysis, analysis_reports = None, []
        if settings.importance:
            analysis_gm = copy.deepcopy(ep.graph_module)  # the graph only: weights stay shared in ep.state_dict
            analysis_reports = _apply(ANALYSIS_PASSES, analysis_gm, geometry, arch, attn, options)
            analysis = rebuild_program(ep, analysis_gm)
    keyless = tuple(ep.graph_module.meta.get(SHARED_META, {}).get("shared_layers", ()))  # shared layers keep no key cache
    outputs = decoder_outputs(geometry, kv_dtype, keyless)
    return SteerableProgram(
        program=program,
        geometry=geometry,
        architecture=arch,
        inputs=decoder_inputs(geometry, kv_dtype, with_bias=True, keyless=keyless),
        outputs=outputs,
        reports=reports,
        analysis=analysis,
        analysis_outputs=[*outputs, *_analysis_extra(analysis_reports, geometry)] if analysis is not None else [],
        analysis_reports=analysis_reports,
        share_attention=ep.graph_module.meta.get(SHARED_META),
    )


def _analysis_extra(reports: list[PassReport], geometry) -> list[TensorSpec]:
    """The analysis graph's added outputs, in the order its passes appended them."""
    specs = {"attn_importance": importance_output(geometry), "attn_queries": queries_output(geometry)}
    return [specs[name] for report in reports for name in report.outputs_added]


def _apply(passes, gm, geometry, arch: str, attn: str, options: dict | None = None) -> list[PassReport]:
    """Run ``passes`` in order; ``options[pass name]`` are extra keyword arguments of that pass's
    ``settings_type.for_model`` (user choices such as shared-attention groups)."""
    reports = []
    for graph_pass in passes:
        extra = (options or {}).get(graph_pass.__name__, {})
        try:
            pass_settings = graph_pass.settings_type.for_model(geometry, arch, attn, **extra)
        except ValueError as exc:
            raise PassError(f"{arch}: {graph_pass.__name__}: {exc}") from None
        if pass_settings is None:
            log.info("%s: does not apply to %s (%s attention), skipped", graph_pass.__name__, arch, attn)
            continue
        if SHARED_META in gm.meta and not getattr(graph_pass, "supports_shared_attention", False):
            # Shared layers have no query/key of their own; a pass must say it handles that.
            log.warning("%s: skipped, it does not support shared-attention graphs (groups %s)", graph_pass.__name__, gm.meta[SHARED_META]["groups"])
            gm.meta.setdefault("steerc_skipped_passes", []).append(graph_pass.__name__)
            continue
        report = graph_pass(gm, pass_settings)
        log.info("%s: %d site(s), per layer %s", report.name, len(report.sites), report.sites_per_layer)
        reports.append(report)
    return reports
