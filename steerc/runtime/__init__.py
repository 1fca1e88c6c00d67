"""steerc runtime: engine execution. Load an engine, prefill and decode against a KV cache, stream text.

This package owns engine execution: the :class:`Engine` (:mod:`~steerc.runtime.engine`), which runs
the step graph on the backend chosen at load time (ONNX Runtime, or a compiled form of
:mod:`steerc.backends`: AOTInductor, TensorRT) and the analysis graph on ONNX Runtime,
the KV cache (:mod:`~steerc.runtime.kv_cache`), the prefill/decode loops
(:mod:`~steerc.runtime.generate`), text in and out (:mod:`~steerc.runtime.text`) and the
:class:`SteerBias` bias the engine is fed (:mod:`~steerc.runtime.steer_bias`). What to steer
lives in :mod:`steerc.steering`; prepared contexts are kept in :mod:`steerc.stores`. Engine folders
are built by :mod:`steerc.build`; their format is :mod:`steerc.engine_format`.

    from steerc.runtime import Engine, TextStream
    engine = Engine.load("engines/smollm2-135m-instruct")
    for piece in TextStream(engine, "What is the capital of France?"):
        print(piece, end="")
"""

from steerc.runtime.engine import ContextTooLongError, Engine
from steerc.runtime.generate import SamplingParams, decode_one_token, generate, prefill
from steerc.runtime.kv_buffers import KVBuffers
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steer_bias import SteerBias
from steerc.runtime.text import Completion, TextStream, complete, encode_prompts

__all__ = [
    "Completion",
    "ContextTooLongError",
    "Engine",
    "KVBuffers",
    "KVCache",
    "SamplingParams",
    "SteerBias",
    "TextStream",
    "complete",
    "decode_one_token",
    "encode_prompts",
    "generate",
    "prefill",
]
