"""Capture: a HF causal LM as one exported decoder-step graph with explicit KV."""

from steerc.capture.decoder_step import DecoderStep
from steerc.capture.export import CaptureShapes, capture_decoder_step, example_inputs, rebuild_program, run_program
from steerc.capture.io_spec import ATTN_IMPORTANCE, ATTN_QUERIES, STEER_BIAS, DecoderGeometry, TensorSpec, decoder_inputs, decoder_outputs, importance_output, queries_output

__all__ = [
    "ATTN_IMPORTANCE",
    "CaptureShapes",
    "DecoderGeometry",
    "DecoderStep",
    "STEER_BIAS",
    "TensorSpec",
    "capture_decoder_step",
    "decoder_inputs",
    "decoder_outputs",
    "importance_output",
    "queries_output",
    "ATTN_QUERIES",
    "example_inputs",
    "rebuild_program",
    "run_program",
]
