"""Random-weight models with the real configs of larger checkpoints, saved as Hugging Face folders.

The compile and decode benchmarks of models beyond 135M (docs/BENCHMARKS.md, "Models beyond
135M") need their shapes, not their weights, and this machine has no network to the model hub.
So the configs below are written out by hand from the published ``config.json`` of each model
(hidden size, layers, heads, KV heads, intermediate size, vocabulary, RoPE, tied embeddings),
and the weights are transformers' own random initialisation, saved in bfloat16 as safetensors
like the published checkpoints.

Tokenizer: the only one available offline is SmolLM2's (from the default model's GGUF). It is
SmolLM2-1.7B's real tokenizer (same 49152-token vocabulary). ``--tokenizer smollm2`` also puts
it into the other folders, where it does not match the model (the benchmarks feed random token
ids below 40000; onnxruntime-genai's model builder wants a tokenizer in the folder).

    python tools/make_random_models.py qwen2.5-0.5b llama-3.2-1b smollm2-1.7b -o models-random
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# name -> (transformers config class name, config values); values from each model's config.json.
REAL_CONFIGS: dict[str, tuple[str, dict]] = {
    "qwen2.5-0.5b": ("Qwen2Config", {
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
        "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 24, "bos_token_id": 151643, "eos_token_id": 151643,
    }),
    "llama-3.2-1b": ("LlamaConfig", {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 8192},
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": 128001,
    }),
    "smollm2-1.7b": ("LlamaConfig", {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rope_theta": 130000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    }),
}
# Parameter counts of the published checkpoints (tied embeddings counted once).
KNOWN_PARAMETERS = {"qwen2.5-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400, "smollm2-1.7b": 1_711_376_384}


def real_config(name: str):
    """The transformers config of ``name`` (a key of :data:`REAL_CONFIGS`)."""
    import transformers

    cls, values = REAL_CONFIGS[name]
    return getattr(transformers, cls)(**values)


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from steerc.models import checkpoint_folder

    return AutoTokenizer.from_pretrained(checkpoint_folder("smollm2-135m-instruct")[0])


def make_model(name: str, out: Path, tokenizer: str = "auto", seed: int = 0) -> Path:
    """Save a random-weight ``name`` into ``out`` (config, bf16 safetensors, tokenizer per
    ``tokenizer``: auto = only where it is the model's own, smollm2 = always, none = never)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = real_config(name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    del model
    if tokenizer == "smollm2" or (tokenizer == "auto" and name.startswith("smollm2")):
        _smollm2_tokenizer().save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(REAL_CONFIGS))
    parser.add_argument("-o", "--out", default="models-random", help="parent folder; each model goes to OUT/NAME")
    parser.add_argument("--tokenizer", default="auto", choices=["auto", "smollm2", "none"],
                        help="auto: SmolLM2's tokenizer for the SmolLM2 model only; smollm2: into every folder; none")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.names:
        path = make_model(name, Path(args.out) / name, args.tokenizer, args.seed)
        print(f"{name}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
