"""``genai_config.json`` in the schema onnxruntime-genai reads.

Its parser rejects unknown keys, so only keys of that schema appear here; everything about
steering lives in ``steerc.json``. (The graph's extra ``steer_bias`` input means genai
itself cannot feed the model; the file is there for tools that read the schema.) An engine
compiled with shared attention gets no ``genai_config.json``: its shared layers have no key
cache, which the ``past_key_names`` template (one key per layer) cannot express; its manifest
says so under ``share_attention``.
"""

from __future__ import annotations

from steerc.capture.io_spec import DecoderGeometry

__all__ = ["genai_config"]

_GENAI_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gemma2": "gemma2", "gemma3_text": "gemma3_text", "phi3": "phi3", "gpt2": "gpt2"}


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def genai_config(config, g: DecoderGeometry, max_seq_len: int, model_file: str) -> dict:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    eos = getattr(text, "eos_token_id", None)
    pad = getattr(text, "pad_token_id", None)
    eos = eos if eos is not None else 0
    return {
        "model": {
            "bos_token_id": _first(getattr(text, "bos_token_id", None) or 0),
            "context_length": max_seq_len,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": g.head_dim,
                "hidden_size": g.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
                "num_attention_heads": g.num_heads,
                "num_hidden_layers": g.num_layers,
                "num_key_value_heads": g.num_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": _first(pad) if pad is not None else _first(eos),
            "type": _GENAI_TYPES.get(text.model_type, text.model_type),
            "vocab_size": g.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": max_seq_len,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
