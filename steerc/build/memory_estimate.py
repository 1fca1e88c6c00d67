"""Compile memory preflight: a compile's peak memory estimated from the model's config alone,
checked against the memory available before anything is loaded.

A compile holds the eager model, the captured program (its weights are the model's, not a
copy), the ONNX exporter's own copy while it writes ``model.onnx.data``, and during the
self-check ONNX Runtime's sessions beside the eager reference. Its peak is therefore a
multiple of the weights in the compile dtype, plus the interpreter and libraries. Those two
numbers are measured (``tools/bench_compile.py``, ``docs/BENCHMARKS.md``, "Models beyond
135M"); ``--weights int4`` does not lower the peak much, because the capture, the export and
the self-check all run on full-precision weights.

The parameter count comes from the config's shapes: the model is built on PyTorch's ``meta``
device (no memory, no weights read), so every architecture transformers knows is counted
exactly, tied embeddings once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from steerc.errors import EngineError

__all__ = ["MemoryEstimate", "SKIP_FLAG", "SKIP_ENV", "parameter_count", "estimate_compile_memory", "check_compile_memory", "skip_requested"]

log = logging.getLogger(__name__)

# The one declaration of the override: the ``steerc compile`` flag and the environment variable.
SKIP_FLAG = "--skip-memory-check"
SKIP_ENV = "STEERC_SKIP_MEMORY_CHECK"

GIB = 1 << 30
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Peak of a compile = BASE_BYTES + multiplier x weight bytes (compile dtype), by --weights. Measured
# (tools/bench_compile.py, peak PSS of the compile's process tree; docs/BENCHMARKS.md, "Models
# beyond 135M") on random-weight Qwen2.5-0.5B / Llama-3.2-1B, fp32: 5.28 / 12.25 GiB for 1.84 /
# 4.60 GiB of weights (a line of 0.63 GiB + 2.53x), int4: 13.52 GiB for the 1B (2.94x); rounded up
# to cover both with ~10% to spare. int8 (rtn, ONNX Runtime's quantizer) is not measured: int4's.
BASE_BYTES = int(1.0 * GIB)
PEAK_MULTIPLIER = {"full": 2.75, "int8": 3.0, "int4": 3.0}
# Headroom kept free for the rest of the machine: a compile that would leave less is refused.
RESERVE_BYTES = int(0.5 * GIB)


@dataclass(frozen=True)
class MemoryEstimate:
    """What a compile of one config needs, against what the machine has free now."""

    parameters: int
    weight_bytes: int  # the parameters in the compile dtype
    peak_bytes: int  # estimated peak of the compile
    available_bytes: int  # psutil.virtual_memory().available when estimated

    def __post_init__(self) -> None:
        for name in ("parameters", "weight_bytes", "peak_bytes", "available_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @property
    def fits(self) -> bool:
        return self.peak_bytes + RESERVE_BYTES <= self.available_bytes

    def to_dict(self) -> dict:
        return {"parameters": self.parameters, "weight_gib": round(self.weight_bytes / GIB, 2), "peak_gib": round(self.peak_bytes / GIB, 2),
                "available_gib": round(self.available_bytes / GIB, 2)}


def parameter_count(config) -> int:
    """Parameters of the causal LM ``config`` describes (tied weights once), from shapes only."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def _available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_compile_memory(config, settings, available_bytes: int | None = None) -> MemoryEstimate:
    """The estimate for compiling ``config`` with ``settings`` (a :class:`~steerc.settings.CompileSettings`)."""
    parameters = parameter_count(config)
    weight_bytes = parameters * DTYPE_BYTES[settings.dtype]
    peak = BASE_BYTES + int(PEAK_MULTIPLIER[settings.weights] * weight_bytes)
    available = _available_bytes() if available_bytes is None else available_bytes
    return MemoryEstimate(parameters=parameters, weight_bytes=weight_bytes, peak_bytes=peak, available_bytes=available)


def skip_requested() -> bool:
    """True when ``STEERC_SKIP_MEMORY_CHECK`` is set to anything but empty or 0."""
    return os.environ.get(SKIP_ENV, "").strip() not in ("", "0")


def check_compile_memory(config, settings, available_bytes: int | None = None) -> MemoryEstimate:
    """Raise :class:`EngineError` when the compile of ``config`` would not fit in the memory
    available now (with :data:`RESERVE_BYTES` to spare); return the estimate otherwise."""
    est = estimate_compile_memory(config, settings, available_bytes)
    log.info("compile memory estimate: %.1fB parameters, %.2f GiB of %s weights, peak ~%.1f GiB; %.1f GiB available",
             est.parameters / 1e9, est.weight_bytes / GIB, settings.dtype, est.peak_bytes / GIB, est.available_bytes / GIB)
    if est.fits:
        return est
    quantized = f" (--weights {settings.weights} does not lower it: capture, export and the self-check run on {settings.dtype} weights)" \
        if settings.weights != "full" else ""
    raise EngineError(
        f"this compile needs about {est.peak_bytes / GIB:.1f} GiB of memory ({est.parameters / 1e9:.2f}B parameters, "
        f"{est.weight_bytes / GIB:.1f} GiB of {settings.dtype} weights x {PEAK_MULTIPLIER[settings.weights]:g} + {BASE_BYTES / GIB:.1f} GiB)"
        f"{quantized}, but only {est.available_bytes / GIB:.1f} GiB is available (keeping {RESERVE_BYTES / GIB:.1f} GiB free): "
        f"close other work or use a machine with more memory; {SKIP_FLAG} (or {SKIP_ENV}=1) compiles anyway, at the risk of being killed for memory"
    )
