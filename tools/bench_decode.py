"""Decode benchmark: steerc engine vs HF transformers eager vs onnxruntime-genai, one run.

Same model (fp32 weights), same random prompt, greedy, exactly N new tokens (EOS ignored).
Variants, interleaved per repeat so machine noise hits all alike:

* ``steerc``          the steerc engine, zero steering bias
* ``steerc-steered``  the same engine with a random N(0, 1) bias over the prompt keys
* ``hf-eager``        transformers ``generate``, eager attention
* ``genai``           onnxruntime-genai on a model its own builder made from the same HF folder
* ``--compare NAME=ENGINE``  another engine folder through the same loop (e.g. ``int4=engines/x-int4``),
                      unsteered; ratios ``NAME / steerc`` are reported
* ``aoti``, ``aoti-steered``  the same engine's AOTInductor package (``--backend aoti`` at compile)
                      through the same runtime loop: compiled code against ONNX Runtime

Reported per (context, batch): time to first token (prefill + first token) and decode
tokens/s (batch x (N-1) tokens over the time from first to last token), medians; then the
ratios the targets are stated in. Writes JSON and a markdown table.

    python tools/bench_decode.py ENGINE_DIR [--contexts 128 512 2048] [--batches 1 4] [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _prompt(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, min(vocab, 40000), (batch, length), dtype=np.int64)


def run_steerc(engine, ids, new, steered):
    from steerc.runtime import Steering, generate

    g = engine.geometry
    steering = None
    if steered:
        steering = Steering(np.random.default_rng(1).standard_normal((g.num_layers, g.num_heads, ids.shape[1])).astype(np.float32))
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in generate(engine, ids, max_new_tokens=new, steering=steering, stop_token_ids=set())]
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def run_hf(model, ids, new):
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, logits_processor=LogitsProcessorList([Stamp()]), pad_token_id=0,
        )
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def run_genai(og_model, ids, new):
    import onnxruntime_genai as og

    params = og.GeneratorParams(og_model)
    params.set_search_options(do_sample=False, max_length=ids.shape[1] + new, min_length=ids.shape[1] + new, batch_size=ids.shape[0])
    generator = og.Generator(og_model, params)
    start = time.perf_counter()
    generator.append_tokens(ids)
    stamps = []
    while not generator.is_done():
        generator.generate_next_token()
        stamps.append(time.perf_counter())
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def build_genai(hf_folder: Path, out: Path) -> Path | None:
    if (out / "genai_config.json").is_file():
        return out
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "genai-cache")]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        print(f"onnxruntime-genai builder failed: {result.stderr[-2000:]}", file=sys.stderr)
        return None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["steerc", "steerc-steered", "hf-eager", "genai"])
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=ENGINE", help="another engine folder to time in the same run")
    parser.add_argument("--workdir", default="bench-work")
    parser.add_argument("--out", default="bench-decode.json")
    args = parser.parse_args()

    from steerc.models import checkpoint_folder, load_model
    from steerc.runtime import Engine

    engine = Engine.load(args.engine)
    spec = engine.manifest["source"]["spec"]
    runners = {}
    if {"steerc", "steerc-steered"} & set(args.variants):
        runners["steerc"] = lambda ids: run_steerc(engine, ids, args.new_tokens, False)
        runners["steerc-steered"] = lambda ids: run_steerc(engine, ids, args.new_tokens, True)
    if {"aoti", "aoti-steered"} & set(args.variants):
        aoti = Engine.load(args.engine, backend="aoti")
        runners["aoti"] = lambda ids: run_steerc(aoti, ids, args.new_tokens, False)
        runners["aoti-steered"] = lambda ids: run_steerc(aoti, ids, args.new_tokens, True)
    compared = []
    for item in args.compare:
        name, _, folder = item.partition("=")
        other = Engine.load(folder)
        runners[name] = (lambda e: lambda ids: run_steerc(e, ids, args.new_tokens, False))(other)
        compared.append(name)
    if "hf-eager" in args.variants:
        hf = load_model(spec, "fp32", "eager").model
        runners["hf-eager"] = lambda ids: run_hf(hf, ids, args.new_tokens)
    genai_note = None
    if "genai" in args.variants:
        try:
            import onnxruntime_genai as og

            folder = build_genai(checkpoint_folder(spec)[0], Path(args.workdir) / "genai-fp32-cpu")
            if folder is None:
                genai_note = "the onnxruntime-genai model builder failed (see stderr)"
            else:
                og_model = og.Model(str(folder))
                runners["genai"] = lambda ids: run_genai(og_model, ids, args.new_tokens)
        except ImportError:
            genai_note = "onnxruntime-genai is not installed (pip install onnxruntime-genai)"
    runners = {k: v for k, v in runners.items() if k in args.variants or k in compared}

    rows = []
    for context in args.contexts:
        for batch in args.batches:
            if context + args.new_tokens > engine.max_seq_len:
                continue
            ids = _prompt(engine.geometry.vocab_size, batch, context)
            for fn in runners.values():  # warm-up at this shape
                fn(ids[:, : min(context, 16)])
            samples = {name: [] for name in runners}
            for _ in range(args.repeats):
                for name, fn in runners.items():
                    ttft, decode_s, steps = fn(ids)
                    samples[name].append((ttft, batch * (steps - 1) / decode_s))
            for name, values in samples.items():
                row = {"context": context, "batch": batch, "variant": name,
                       "ttft_s": statistics.median(v[0] for v in values), "decode_tok_s": statistics.median(v[1] for v in values)}
                rows.append(row)
                print(f"ctx {context:>5} batch {batch}  {name:<15} ttft {row['ttft_s']:7.3f} s  decode {row['decode_tok_s']:7.1f} tok/s", flush=True)

    def ratio(a, b, context, batch, key="decode_tok_s"):
        get = {(r["variant"], r["context"], r["batch"]): r[key] for r in rows}
        return get.get((a, context, batch), float("nan")) / get.get((b, context, batch), float("nan"))

    ratios = []
    for context in args.contexts:
        for batch in args.batches:
            ratios.append({"context": context, "batch": batch,
                           "steerc_over_hf_eager": ratio("steerc", "hf-eager", context, batch),
                           "steerc_over_genai": ratio("steerc", "genai", context, batch),
                           "steered_over_unsteered": ratio("steerc-steered", "steerc", context, batch),
                           "aoti_over_onnx": ratio("aoti", "steerc", context, batch),
                           "aoti_over_onnx_steered": ratio("aoti-steered", "steerc-steered", context, batch),
                           "aoti_over_onnx_ttft": 1 / ratio("aoti", "steerc", context, batch, key="ttft_s"),
                           **{f"{n}_over_steerc": ratio(n, "steerc", context, batch) for n in compared},
                           **{f"{n}_over_steerc_ttft": 1 / ratio(n, "steerc", context, batch, key="ttft_s") for n in compared}})
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "engine": str(args.engine), "new_tokens": args.new_tokens,
              "repeats": args.repeats, "genai_note": genai_note, "rows": rows, "ratios": ratios}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| context | batch | steerc / HF eager | steerc / genai | steered / unsteered | AOTI / ONNX decode | AOTI / ONNX steered | ONNX TTFT / AOTI TTFT |\n|---|---|---|---|---|---|---|---|")
    for r in ratios:
        print(f"| {r['context']} | {r['batch']} | {r['steerc_over_hf_eager']:.2f}x | {r['steerc_over_genai']:.2f}x | {r['steered_over_unsteered']:.3f} "
              f"| {r['aoti_over_onnx']:.2f}x | {r['aoti_over_onnx_steered']:.2f}x | {r['aoti_over_onnx_ttft']:.2f}x |")
    for n in compared:
        print(f"{n} / steerc decode: " + ", ".join(f"ctx {r['context']} x{r['batch']}: {r[f'{n}_over_steerc']:.2f}x (TTFT {r[f'{n}_over_steerc_ttft']:.2f}x)" for r in ratios))
    if genai_note:
        print(f"genai: {genai_note}")


if __name__ == "__main__":
    main()
