"""Tiny random-weight decoders (2 layers, hidden 64) built from transformers config classes."""

from __future__ import annotations

import torch

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, hidden_size=64, intermediate_size=128, max_position_embeddings=512)


def _llama(kv_heads=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=kv_heads))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**COMMON, num_attention_heads=4, num_key_value_heads=1, sliding_window=None))


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(cfg)


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4)
    return Gemma2ForCausalLM(cfg)


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**COMMON, num_attention_heads=4, num_key_value_heads=4, pad_token_id=0))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=512))


# name -> (factory, attention implementation captured)
TINY_MODELS = {
    "llama": (_llama, "sdpa"),
    "llama-eager": (_llama, "eager"),
    "qwen2": (_qwen2, "sdpa"),
    "mistral": (_mistral, "sdpa"),
    "gemma2": (_gemma2, "eager"),
    "gemma3": (_gemma3, "sdpa"),
    "phi3": (_phi3, "sdpa"),
    "gpt2": (_gpt2, "eager"),
}


def tiny_model(name: str, seed: int = 0):
    factory, attn = TINY_MODELS[name]
    torch.manual_seed(seed)
    model = factory().eval()
    model.set_attn_implementation(attn)
    # Random init gives near-uniform attention; scale up q/k so the bias visibly matters.
    return model
