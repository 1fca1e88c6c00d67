"""Names, dtypes and dimensions of an engine's inputs and outputs.

The names follow optimum / onnxruntime-genai so existing tooling recognises the graph:
``input_ids``, ``position_ids``, ``attention_mask``, ``past_key_values.{i}.key|value`` in,
``logits``, ``present.{i}.key|value`` out. steerc adds ``steer_bias``. An engine compiled with
shared attention has no ``past_key_values.{i}.key`` / ``present.{i}.key`` for its shared
layers (``keyless``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorSpec", "DecoderGeometry", "decoder_inputs", "decoder_outputs", "importance_output", "queries_output", "STEER_BIAS", "ATTN_IMPORTANCE", "ATTN_QUERIES", "DIMS"]

STEER_BIAS = "steer_bias"
ATTN_IMPORTANCE = "attn_importance"
ATTN_QUERIES = "attn_queries"

# Dimension names. total_sequence_length = past_sequence_length + sequence_length.
DIMS = {
    "batch_size": "rows of the batch",
    "sequence_length": "new tokens in this call (prompt length in prefill, 1 in decode)",
    "past_sequence_length": "tokens already in the KV cache (0 in prefill)",
    "total_sequence_length": "past_sequence_length + sequence_length",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[str | int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class DecoderGeometry:
    """The shape facts of a decoder that the engine contract needs."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> "DecoderGeometry":
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = getattr(text, "num_attention_heads", None) or text.n_head
        layers = getattr(text, "num_hidden_layers", None) or text.n_layer
        hidden = getattr(text, "hidden_size", None) or text.n_embd
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        return cls(layers, heads, kv_heads, head_dim, hidden, text.vocab_size)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def kv_names(num_layers: int, prefix: str, keyless: tuple[int, ...] | list[int] = ()) -> list[str]:
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` per layer; layers in ``keyless`` (shared
    attention: they reuse another layer's probabilities) have no key."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value") if not (kind == "key" and i in keyless)]


def decoder_inputs(g: DecoderGeometry, kv_dtype: str, with_bias: bool = True, keyless: tuple[int, ...] | list[int] = ()) -> list[TensorSpec]:
    specs = [
        TensorSpec("input_ids", "int64", ("batch_size", "sequence_length")),
        TensorSpec("position_ids", "int64", ("batch_size", "sequence_length")),
        TensorSpec("attention_mask", "int64", ("batch_size", "total_sequence_length")),
    ]
    kv_dims = ("batch_size", g.num_kv_heads, "past_sequence_length", g.head_dim)
    specs += [TensorSpec(n, kv_dtype, kv_dims) for n in kv_names(g.num_layers, "past_key_values", keyless)]
    if with_bias:
        specs.append(TensorSpec(STEER_BIAS, "float32", ("batch_size", g.num_layers, g.num_heads, "total_sequence_length")))
    return specs


def decoder_outputs(g: DecoderGeometry, kv_dtype: str, keyless: tuple[int, ...] | list[int] = ()) -> list[TensorSpec]:
    kv_dims = ("batch_size", g.num_kv_heads, "total_sequence_length", g.head_dim)
    return [TensorSpec("logits", "float32" if kv_dtype == "float32" else kv_dtype, ("batch_size", "sequence_length", g.vocab_size))] + [
        TensorSpec(n, kv_dtype, kv_dims) for n in kv_names(g.num_layers, "present", keyless)
    ]


def importance_output(g: DecoderGeometry) -> TensorSpec:
    """The analysis graph's extra output: attention received per key, summed over query rows."""
    return TensorSpec(ATTN_IMPORTANCE, "float32", ("batch_size", g.num_layers, g.num_heads, "total_sequence_length"))


def queries_output(g: DecoderGeometry) -> TensorSpec:
    """The analysis graph's query vectors per layer and head, summed over the call's real rows."""
    return TensorSpec(ATTN_QUERIES, "float32", ("batch_size", g.num_layers, g.num_heads, g.head_dim))
