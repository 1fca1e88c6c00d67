"""Decode benchmark: steerc engines against HF transformers eager, onnxruntime-genai and llama.cpp, one run.

Same model, same random prompt (token ids), greedy, exactly N new tokens (EOS ignored).
Variants, interleaved per repeat so machine noise hits all alike:

* ``steerc``          the steerc engine, zero steering bias
* ``steerc-steered``  the same engine with a random N(0, 1) bias over the prompt keys
* ``hf-eager``        transformers ``generate``, eager attention (fp32)
* ``genai``           onnxruntime-genai on a model its own builder made from the same HF folder (``-p fp32 -e cpu``)
* ``genai-int4``      the same builder with ``-p int4 -e cpu`` (MatMulNBits, block 32, symmetric, accuracy level 4:
                      the scheme ``steerc compile --weights int4`` uses)
* ``llama.cpp``       llama-cpp-python on the source GGUF itself (``--threads`` threads, default 2; batch 1 only,
                      rows for batch > 1 are skipped with a note)
* ``--compare NAME=ENGINE``  another engine folder through the same loop (e.g. ``int4=engines/x-int4``),
                      unsteered; ratios ``NAME / steerc`` and ``NAME / PEER`` for every peer run are reported
* ``aoti``, ``aoti-steered``  the same engine's AOTInductor package (``--backend aoti`` at compile)
                      through the same runtime loop: compiled code against ONNX Runtime

A peer that is not installed (onnxruntime-genai, llama-cpp-python) or whose model cannot be built is
skipped with a note in the output and the JSON (``notes``), not an error.

Reported per (context, batch): time to first token (prefill + first token) and decode
tokens/s (batch x (N-1) tokens over the time from first to last token), medians; then the
ratios the targets are stated in, and ``--ratio A/B`` pairs (decode A / B, TTFT B / A: above 1
means A is faster). Writes JSON (plot it with ``tools/plot_decode.py``) and a markdown table.

    python tools/bench_decode.py ENGINE_DIR [--contexts 128 512 2048] [--batches 1 4] [--new-tokens 32] [--repeats 3]
        [--variants steerc llama.cpp genai genai-int4] [--compare int4=ENGINE_INT4] [--ratio int4/llama.cpp]

Benchmark-only peers (not in ``dev``, CI does not build them)::

    pip install -e '.[bench]'                  # llama-cpp-python 0.3.36 + matplotlib
    # = pip install llama-cpp-python==0.3.36  (an sdist: builds llama.cpp from source, needs a C/C++
    #   compiler and cmake; about 15-20 minutes on 2 busy cores)
    pip install onnxruntime-genai>=0.18        # in the dev extra already; wheels, no build

The llama.cpp peer reads the GGUF the engine was compiled from (the manifest's source path) or ``--gguf``.
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

PEERS = ("genai", "genai-int4", "llama.cpp")
LLAMA_CPP_INSTALL = "pip install 'steerc[bench]', i.e. llama-cpp-python==0.3.36, which builds llama.cpp from source: C/C++ compiler + cmake"
GENAI_INSTALL = "pip install onnxruntime-genai>=0.18"


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


def run_llama_cpp(llm, ids, new):
    """Greedy decode of exactly ``new`` tokens after ``ids`` (batch 1): the prompt in ``n_batch``
    chunks, then one token per step, argmax over the last logits (numpy, as the steerc runtime
    does). The KV cache is cleared first (``reset`` + ``eval`` drops positions from 0 on)."""
    if ids.shape[0] != 1:
        raise ValueError("the llama.cpp peer runs batch 1 only")
    n_vocab = llm.n_vocab()

    def next_token():
        return int(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).argmax())

    llm.reset()
    start = time.perf_counter()
    llm.eval(ids[0].tolist())
    token = next_token()
    stamps = [time.perf_counter()]
    for _ in range(new - 1):
        llm.eval([token])
        token = next_token()
        stamps.append(time.perf_counter())
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def build_genai(hf_folder: Path, out: Path, precision: str = "fp32") -> Path | None:
    """A model onnxruntime-genai's own builder made from ``hf_folder`` (cached in ``out``)."""
    if (out / "genai_config.json").is_file():
        return out
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu",
           "-c", str(out.parent / "genai-cache")]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        print(f"onnxruntime-genai builder ({precision}) failed: {result.stderr[-2000:]}", file=sys.stderr)
        return None
    return out


def setup_genai(spec, workdir: Path, precision: str, new: int):
    """(runner, note): the runner is None and the note says why when the peer cannot run."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None, f"onnxruntime-genai is not installed ({GENAI_INSTALL})"
    from steerc.models import checkpoint_folder

    folder = build_genai(checkpoint_folder(spec)[0], workdir / f"genai-{precision}-cpu", precision)
    if folder is None:
        return None, f"the onnxruntime-genai model builder failed for -p {precision} (see stderr)"
    og_model = og.Model(str(folder))
    return (lambda ids: run_genai(og_model, ids, new)), None


def setup_llama_cpp(gguf: str | None, n_ctx: int, threads: int, new: int, flash_attn: bool = False):
    """(runner, note), as ``setup_genai``: llama-cpp-python on the GGUF itself."""
    try:
        import llama_cpp
    except ImportError:
        return None, f"llama-cpp-python is not installed ({LLAMA_CPP_INSTALL})"
    if not gguf or not Path(gguf).is_file():
        return None, f"no GGUF file for llama.cpp (the engine's source is not a GGUF, or {gguf} is missing): pass --gguf"
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                          logits_all=False, flash_attn=flash_attn, verbose=False)
    return (lambda ids: run_llama_cpp(llm, ids, new)), None


def peer_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnxruntime", "onnxruntime-genai", "llama-cpp-python", "torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def pair_ratios(rows: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per (context, batch) and pair (A, B) both measured at: decode tok/s A / B and TTFT B / A
    (above 1: A is faster on both)."""
    get = {(r["variant"], r["context"], r["batch"]): r for r in rows}
    shapes = sorted({(r["context"], r["batch"]) for r in rows})
    out = []
    for a, b in pairs:
        for context, batch in shapes:
            ra, rb = get.get((a, context, batch)), get.get((b, context, batch))
            if ra is None or rb is None:
                continue
            out.append({"a": a, "b": b, "context": context, "batch": batch,
                        "decode": ra["decode_tok_s"] / rb["decode_tok_s"], "ttft": rb["ttft_s"] / ra["ttft_s"]})
    return out


def default_pairs(names: list[str], compared: list[str]) -> list[tuple[str, str]]:
    """Every --compare engine and the main engine against every peer run, and against steerc."""
    peers = [p for p in PEERS if p in names]
    mine = [n for n in ["steerc", *compared] if n in names]
    pairs = [(m, p) for m in mine for p in peers]
    pairs += [(n, "steerc") for n in compared if "steerc" in names]
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["steerc", "steerc-steered", "hf-eager", "genai"],
                        help="steerc steerc-steered hf-eager genai genai-int4 llama.cpp aoti aoti-steered")
    parser.add_argument("--compare", action="append", nargs="+", default=[], metavar="NAME=ENGINE", help="other engine folders to time in the same run")
    parser.add_argument("--ratio", action="append", nargs="+", default=[], metavar="A/B",
                        help="extra variant pairs to report (decode A / B, TTFT B / A); default: every engine against every peer")
    parser.add_argument("--gguf", default=None, help="GGUF for the llama.cpp peer (default: the engine's source, when it is one)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (n_threads and n_threads_batch)")
    parser.add_argument("--llama-flash-attn", action="store_true", help="llama.cpp with flash attention (llama-cpp-python's default: off)")
    parser.add_argument("--workdir", default="bench-work", help="where the genai builder's models are cached")
    parser.add_argument("--out", default="bench-decode.json")
    args = parser.parse_args(argv)
    compare_items = [item for group in args.compare for item in group]
    ratio_items = [item for group in args.ratio for item in group]

    from steerc.models import load_model
    from steerc.runtime import Engine

    engine = Engine.load(args.engine)
    source = engine.manifest["source"]
    spec = source["spec"]
    runners, notes = {}, {}
    batch_limit = {"llama.cpp": 1}
    if {"steerc", "steerc-steered"} & set(args.variants):
        runners["steerc"] = lambda ids: run_steerc(engine, ids, args.new_tokens, False)
        runners["steerc-steered"] = lambda ids: run_steerc(engine, ids, args.new_tokens, True)
    if {"aoti", "aoti-steered"} & set(args.variants):
        aoti = Engine.load(args.engine, backend="aoti")
        runners["aoti"] = lambda ids: run_steerc(aoti, ids, args.new_tokens, False)
        runners["aoti-steered"] = lambda ids: run_steerc(aoti, ids, args.new_tokens, True)
    compared, max_seq = [], {"steerc": engine.max_seq_len}
    for item in compare_items:
        name, _, folder = item.partition("=")
        other = Engine.load(folder)
        runners[name] = (lambda e: lambda ids: run_steerc(e, ids, args.new_tokens, False))(other)
        compared.append(name)
        max_seq[name] = other.max_seq_len
    if "hf-eager" in args.variants:
        hf = load_model(spec, "fp32", "eager").model
        runners["hf-eager"] = lambda ids: run_hf(hf, ids, args.new_tokens)
    for name, precision in (("genai", "fp32"), ("genai-int4", "int4")):
        if name in args.variants:
            runner, note = setup_genai(spec, Path(args.workdir), precision, args.new_tokens)
            if runner is not None:
                runners[name] = runner
            else:
                notes[name] = note
    if "llama.cpp" in args.variants:
        gguf = args.gguf or (source.get("path") if source.get("kind") == "gguf" else None)
        n_ctx = max(args.contexts) + args.new_tokens + 16
        runner, note = setup_llama_cpp(gguf, n_ctx, args.threads, args.new_tokens, args.llama_flash_attn)
        if runner is not None:
            runners["llama.cpp"] = runner
        else:
            notes["llama.cpp"] = note
    runners = {k: v for k, v in runners.items() if k in args.variants or k in compared}
    for name, note in notes.items():
        print(f"skipped {name}: {note}", flush=True)
    if not runners:
        print("nothing to run", file=sys.stderr)

    rows, skipped, load_start = [], [], os.getloadavg()
    limit = min(max_seq.values())
    for context in args.contexts:
        if context + args.new_tokens > limit:
            skipped.append(f"context {context}: {context} + {args.new_tokens} new tokens exceeds the engines' max_seq_len {limit}")
            print(f"skipped {skipped[-1]}", flush=True)
            continue
        for batch in args.batches:
            active = {n: fn for n, fn in runners.items() if batch <= batch_limit.get(n, batch)}
            for n in runners.keys() - active.keys():
                skipped.append(f"{n} at batch {batch}: batch 1 only (llama-cpp-python runs one sequence per context)")
            if not active:
                continue
            ids = _prompt(engine.geometry.vocab_size, batch, context)
            for fn in active.values():  # warm-up at this shape
                fn(ids[:, : min(context, 16)])
            samples = {name: [] for name in active}
            for _ in range(args.repeats):
                for name, fn in active.items():
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
    for context, batch in sorted({(r["context"], r["batch"]) for r in rows}):
        ratios.append({"context": context, "batch": batch,
                       "steerc_over_hf_eager": ratio("steerc", "hf-eager", context, batch),
                       "steerc_over_genai": ratio("steerc", "genai", context, batch),
                       "steered_over_unsteered": ratio("steerc-steered", "steerc", context, batch),
                       "aoti_over_onnx": ratio("aoti", "steerc", context, batch),
                       "aoti_over_onnx_steered": ratio("aoti-steered", "steerc-steered", context, batch),
                       "aoti_over_onnx_ttft": 1 / ratio("aoti", "steerc", context, batch, key="ttft_s"),
                       **{f"{n}_over_steerc": ratio(n, "steerc", context, batch) for n in compared},
                       **{f"{n}_over_steerc_ttft": 1 / ratio(n, "steerc", context, batch, key="ttft_s") for n in compared}})
    names = list(runners)
    skipped = list(dict.fromkeys(skipped))
    pairs = default_pairs(names, compared)
    for item in ratio_items:
        a, _, b = item.partition("/")
        if (a, b) not in pairs:
            pairs.append((a, b))
    pairs_out = pair_ratios(rows, pairs)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
              "versions": peer_versions(), "engine": str(args.engine), "compare": dict(i.partition("=")[::2] for i in compare_items),
              "new_tokens": args.new_tokens, "repeats": args.repeats, "llama_cpp": {"threads": args.threads, "flash_attn": args.llama_flash_attn},
              "genai_note": notes.get("genai"), "notes": notes, "skipped": skipped,
              "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows, "ratios": ratios, "pair_ratios": pairs_out}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    print("\n" + markdown_table(rows))
    if pairs_out:
        print("\n" + markdown_pairs(pairs_out))
    if {"hf-eager", "genai", "steerc-steered", "aoti"} & set(names):
        print("\n| context | batch | steerc / HF eager | steerc / genai | steered / unsteered | AOTI / ONNX decode | AOTI / ONNX steered | ONNX TTFT / AOTI TTFT |\n|---|---|---|---|---|---|---|---|")
        def cell(x, fmt=".2f", suffix="x"):
            return "—" if x != x else f"{x:{fmt}}{suffix}"

        for r in ratios:
            print(f"| {r['context']} | {r['batch']} | {cell(r['steerc_over_hf_eager'])} | {cell(r['steerc_over_genai'])} | {cell(r['steered_over_unsteered'], '.3f', '')} "
                  f"| {cell(r['aoti_over_onnx'])} | {cell(r['aoti_over_onnx_steered'])} | {cell(r['aoti_over_onnx_ttft'])} |")
    for line in skipped:
        print(f"skipped {line}")
    for name, note in notes.items():
        print(f"{name}: {note}")


def markdown_table(rows: list[dict]) -> str:
    """One row per (context, batch), TTFT and decode tok/s per variant, in the run's order."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    get = {(r["variant"], r["context"], r["batch"]): r for r in rows}
    head = "| context | batch | " + " | ".join(f"{v} tok/s" for v in variants) + " | TTFT " + " / ".join(variants) + " (s) |"
    lines = [head, "|" + "---|" * (3 + len(variants))]
    for context, batch in sorted({(r["context"], r["batch"]) for r in rows}):
        cells = [get.get((v, context, batch)) for v in variants]
        lines.append(f"| {context} | {batch} | " + " | ".join(f"{c['decode_tok_s']:.1f}" if c else "—" for c in cells)
                     + " | " + " / ".join(f"{c['ttft_s']:.2f}" if c else "—" for c in cells) + " |")
    return "\n".join(lines)


def markdown_pairs(pairs: list[dict]) -> str:
    """Ratios A / B per pair (columns) and (context, batch) (rows): decode tok/s, then TTFT B / A."""
    names = list(dict.fromkeys((p["a"], p["b"]) for p in pairs))
    get = {(p["a"], p["b"], p["context"], p["batch"]): p for p in pairs}
    head = ("| context | batch | " + " | ".join(f"{a} / {b} decode" for a, b in names) + " | "
            + " | ".join(f"TTFT {b} / {a}" for a, b in names) + " |")
    lines = [head, "|" + "---|" * (2 + 2 * len(names))]
    for context, batch in sorted({(p["context"], p["batch"]) for p in pairs}):
        cells = [get.get((a, b, context, batch)) for a, b in names]
        lines.append(f"| {context} | {batch} | " + " | ".join(f"{c['decode']:.2f}x" if c else "—" for c in cells) + " | "
                     + " | ".join(f"{c['ttft']:.2f}x" if c else "—" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
