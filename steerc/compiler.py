"""Model -> steerable program: capture, then the passes in ``steerc.passes.PASSES``."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

from steerc.capture import CaptureShapes, DecoderGeometry, TensorSpec, capture_decoder_step, decoder_inputs, decoder_outputs, importance_output, rebuild_program
from steerc.errors import UnsupportedArchitectureError
from steerc.passes import ANALYSIS_PASSES, PASSES, PassReport
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
        reports = _apply(PASSES, ep.graph_module, geometry, arch, attn)
        program = rebuild_program(ep)
        analysis, analysis_reports = None, []
        if settings.importance:
            analysis_gm = copy.deepcopy(ep.graph_module)  # the graph only: weights stay shared in ep.state_dict
            analysis_reports = _apply(ANALYSIS_PASSES, analysis_gm, geometry, arch, attn)
            analysis = rebuild_program(ep, analysis_gm)
    outputs = decoder_outputs(geometry, kv_dtype)
    return SteerableProgram(
        program=program,
        geometry=geometry,
        architecture=arch,
        inputs=decoder_inputs(geometry, kv_dtype, with_bias=True),
        outputs=outputs,
        reports=reports,
        analysis=analysis,
        analysis_outputs=[*outputs, importance_output(geometry)] if analysis is not None else [],
        analysis_reports=analysis_reports,
    )


def _apply(passes, gm, geometry, arch: str, attn: str) -> list[PassReport]:
    reports = []
    for graph_pass in passes:
        pass_settings = graph_pass.settings_type.for_model(geometry, arch, attn)
        if pass_settings is None:
            log.info("%s: does not apply to %s (%s attention), skipped", graph_pass.__name__, arch, attn)
            continue
        report = graph_pass(gm, pass_settings)
        log.info("%s: %d site(s), per layer %s", report.name, len(report.sites), report.sites_per_layer)
        reports.append(report)
    return reports
