"""steerc runtime: load an engine, prefill and decode against a KV cache, stream text.

    from steerc.runtime import Engine, TextStream
    engine = Engine.load("engines/smollm2-135m-instruct")
    for piece in TextStream(engine, "What is the capital of France?"):
        print(piece, end="")
"""

from steerc.runtime.engine import ContextTooLongError, Engine
from steerc.runtime.generate import SamplingParams, decode_one_token, generate, prefill
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steering import Steering
from steerc.runtime.text import Completion, TextStream, complete, encode_prompts

__all__ = [
    "Completion",
    "ContextTooLongError",
    "Engine",
    "KVCache",
    "SamplingParams",
    "Steering",
    "TextStream",
    "complete",
    "decode_one_token",
    "encode_prompts",
    "generate",
    "prefill",
]
