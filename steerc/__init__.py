"""steerc: an attention-steering compiler for Hugging Face causal language models.

Public API (imported lazily, so ``import steerc`` stays cheap)::

    from steerc import compile_engine, CompileSettings, read_manifest
    manifest = compile_engine("smollm2-135m-instruct", "engines/smol", CompileSettings(opset=23))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CompileSettings": "steerc.settings",
    "compile_engine": "steerc.build",
    "read_manifest": "steerc.engine_format",
    "capture_steerable": "steerc.build.steerable",
    "SteerableProgram": "steerc.build.steerable",
    "load_model": "steerc.models",
    "resolve_model": "steerc.models",
    "DEFAULT_MODEL": "steerc.models",
    "reference_step": "steerc.reference",
    "SteercError": "steerc.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerc' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
