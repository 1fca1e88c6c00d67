"""One Triton model's ``config.pbtxt``: written as protobuf text (:func:`model_config`) and, when
``tritonclient[grpc]`` is installed, parsed with Triton's own ``ModelConfig`` schema
(:func:`validate_config`)."""

from __future__ import annotations

import logging

from steerc.deploy.triton.pbtxt import tensor_block, text
from steerc.deploy.triton.platforms import PLATFORMS, instance_group
from steerc.deploy.triton.sequence_state import KV_MODES, kv_pairs, sequence_batching
from steerc.errors import SteercError

__all__ = ["model_config", "validate_config"]

log = logging.getLogger(__name__)


def model_config(manifest: dict, name: str, platform: str = "onnxruntime", kv: str = "explicit", *, source: str | None = None,
                 profiles: list[dict] | None = None, inputs: list[dict] | None = None, outputs: list[dict] | None = None) -> str:
    """The ``config.pbtxt`` text of one model (``platform`` is ``onnxruntime`` or ``tensorrt``)."""
    if kv not in KV_MODES:
        raise SteercError(f"unknown KV mode {kv!r}: choose explicit or implicit")
    inputs = list(inputs if inputs is not None else manifest["inputs"])
    outputs = list(outputs if outputs is not None else manifest["outputs"])
    pairs = kv_pairs(inputs, outputs) if kv == "implicit" else []
    state_names = {s["name"] for pair in pairs for s in pair}
    g = manifest.get("geometry", {})
    lines = [
        f"# Written by `steerc export-triton`{' from ' + source if source else ''}: steerc engine format {manifest.get('format_version')}, "
        f"steerc {manifest.get('steerc_version', '?')}.",
        f"# {manifest.get('architecture', '?')}, {manifest.get('dtype', '?')}, {g.get('num_layers', '?')} layers, {g.get('num_heads', '?')} heads, "
        f"{g.get('num_kv_heads', '?')} kv heads; KV cache {kv}.",
        f"# Limits Triton does not enforce: past_sequence_length + sequence_length <= {manifest.get('max_seq_len', '?')} tokens, "
        f"batch_size <= {manifest.get('max_batch', '?')}.",
        "# steer_bias [batch, layers, heads, past+new]: additive log-space bias on attention logits over key positions",
        "# (per layer and query head, broadcast over query rows); zeros = the unsteered model, log(alpha) down-weights a key.",
        f"name: {text(name)}",
        f"platform: {text(PLATFORMS[platform])}",
        # max_batch_size 0: Triton does no batching of its own and each request's tensors reach the
        # model as sent, batch dim included (-1 in dims). A request is one decoder step of a batch
        # whose rows share one past length (left padding in attention_mask handles ragged prompts).
        # Triton's batchers stack independent requests along dim 0, which needs every other dim to
        # match, but requests at different steps differ in sequence_length / past_sequence_length
        # and KV caches of different lengths cannot be stacked. So clients batch, Triton does not;
        # the dims keep the graph's full rank, which the onnxruntime and TensorRT backends check.
        "max_batch_size: 0",
    ]
    lines += tensor_block("input", [s for s in inputs if s["name"] not in state_names])
    lines += tensor_block("output", [s for s in outputs if s["name"] not in state_names])
    if pairs:
        lines += sequence_batching(pairs, manifest.get("max_batch"))
    if platform == "tensorrt" and profiles:
        lines += instance_group(profiles)
    return "\n".join(lines) + "\n"


def validate_config(text: str, what: str = "config.pbtxt") -> bool:
    """Parse ``text`` with Triton's ``ModelConfig`` schema (``tritonclient[grpc]``); ``False``
    when tritonclient is not installed (nothing checked), an error when the text does not parse."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        log.debug("tritonclient[grpc] is not installed: %s not checked against Triton's ModelConfig schema", what)
        return False
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:  # a bug in model_config, not in the user's input
        raise RuntimeError(f"steerc wrote a {what} that Triton's ModelConfig schema rejects: {exc}") from exc
    return True
