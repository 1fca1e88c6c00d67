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
                      unsteered; ratios ``NAME / steerc`` and ``NAME / PEER`` for every peer run are reported.
                      Two builds of one model A/B this way: what a compile change bought.
* ``aoti``, ``aoti-steered``  the same engine's AOTInductor package (``--backend aoti`` at compile)
                      through the same runtime loop: compiled code against ONNX Runtime

A peer that is not installed (onnxruntime-genai, llama-cpp-python) or whose model cannot be built is
skipped with a note in the output and the JSON (``notes``), not an error.

Reported per (context, batch): time to first token (prefill + first token) and decode
tokens/s (batch x (N-1) tokens over the time from first to last token), medians; then the
ratios the targets are stated in, and ``--ratio A/B`` pairs (decode A / B, TTFT B / A: above 1
means A is faster). Writes JSON and a markdown table; ``--plot PNG`` draws decode tokens/s
against context length, and ``--from-json JSON`` redraws the tables and plot of a recorded run
without running anything.

    python tools/bench_decode.py [ENGINE_DIR] [--contexts 128 512 2048] [--batches 1 4] [--new-tokens 32] [--repeats 3]
        [--variants steerc llama.cpp genai genai-int4] [--compare int4=ENGINE_INT4] [--ratio int4/llama.cpp] [--plot PNG]
    python tools/bench_decode.py --from-json docs/bench/decode-peers.json --plot docs/bench/decode-vs-context.png [--label steerc="steerc fp32"]

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
import sys
from pathlib import Path

import numpy as np

from harness import (PEERS, add_engine_args, interleave, load_engine, machine, medians, package_versions, plot_decode, random_prompt, setup_genai,
                     setup_hf, setup_llama_cpp, time_generate, write_json)


def steerc_runner(engine, new: int, steered: bool):
    """Greedy generation on a steerc engine; ``steered``: a random N(0, 1) bias over the prompt keys."""
    from steerc.runtime import SteerBias

    g = engine.geometry

    def run(ids):
        steering = None
        if steered:
            steering = SteerBias(np.random.default_rng(1).standard_normal((g.num_layers, g.num_heads, ids.shape[1])).astype(np.float32))
        return time_generate(engine, ids, new, steering)

    return run


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


def target_ratios(rows: list[dict], compared: list[str]) -> list[dict]:
    """Per (context, batch): the ratios the targets are stated in (NaN where a variant did not run)."""
    def ratio(a, b, context, batch, key="decode_tok_s"):
        get = {(r["variant"], r["context"], r["batch"]): r[key] for r in rows}
        return get.get((a, context, batch), float("nan")) / get.get((b, context, batch), float("nan"))

    out = []
    for context, batch in sorted({(r["context"], r["batch"]) for r in rows}):
        out.append({"context": context, "batch": batch,
                    "steerc_over_hf_eager": ratio("steerc", "hf-eager", context, batch),
                    "steerc_over_genai": ratio("steerc", "genai", context, batch),
                    "steered_over_unsteered": ratio("steerc-steered", "steerc", context, batch),
                    "aoti_over_onnx": ratio("aoti", "steerc", context, batch),
                    "aoti_over_onnx_steered": ratio("aoti-steered", "steerc-steered", context, batch),
                    "aoti_over_onnx_ttft": 1 / ratio("aoti", "steerc", context, batch, key="ttft_s"),
                    **{f"{n}_over_steerc": ratio(n, "steerc", context, batch) for n in compared},
                    **{f"{n}_over_steerc_ttft": 1 / ratio(n, "steerc", context, batch, key="ttft_s") for n in compared}})
    return out


def runners_for(args, engine, compare_items: list[str]) -> tuple[dict, dict, list[str], dict]:
    """(runners by variant, notes of peers that cannot run, compared engine names, max_seq_len by engine)."""
    new, runners, notes = args.new_tokens, {}, {}
    source = engine.manifest["source"]
    if {"steerc", "steerc-steered"} & set(args.variants):
        runners["steerc"] = steerc_runner(engine, new, False)
        runners["steerc-steered"] = steerc_runner(engine, new, True)
    if {"aoti", "aoti-steered"} & set(args.variants):
        aoti = load_engine(args.engine, args.threads, backend="aoti")
        runners["aoti"] = steerc_runner(aoti, new, False)
        runners["aoti-steered"] = steerc_runner(aoti, new, True)
    compared, max_seq = [], {"steerc": engine.max_seq_len}
    for item in compare_items:
        name, _, folder = item.partition("=")
        other = load_engine(folder, args.threads, args.backend)
        runners[name] = steerc_runner(other, new, False)
        compared.append(name)
        max_seq[name] = other.max_seq_len
    if "hf-eager" in args.variants:
        runners["hf-eager"] = setup_hf(source["spec"], new, "eager")
    for name, precision in (("genai", "fp32"), ("genai-int4", "int4")):
        if name in args.variants:
            runner, note = setup_genai(source["spec"], Path(args.workdir), precision, new)
            runners[name] = runner
            notes[name] = note
    if "llama.cpp" in args.variants:
        gguf = args.gguf or (source.get("path") if source.get("kind") == "gguf" else None)
        runners["llama.cpp"], notes["llama.cpp"] = setup_llama_cpp(gguf, max(args.contexts) + new + 16, args.threads or 2, new, args.llama_flash_attn)
    notes = {k: v for k, v in notes.items() if v}
    runners = {k: v for k, v in runners.items() if v is not None and (k in args.variants or k in compared)}
    return runners, notes, compared, max_seq


def measure(args, engine, runners: dict, max_seq: dict) -> tuple[list[dict], list[str]]:
    """Rows (context, batch, variant, median TTFT and decode tok/s) and what was skipped."""
    batch_limit = {"llama.cpp": 1}
    rows, skipped = [], []
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
            ids = random_prompt(engine.geometry.vocab_size, batch, context)
            for fn in active.values():  # warm-up at this shape
                fn(ids[:, : min(context, 16)])
            samples = interleave({name: (lambda fn=fn: fn(ids)) for name, fn in active.items()}, args.repeats, warmup=False)
            rates = {name: [(ttft, batch * (steps - 1) / decode_s) for ttft, decode_s, steps in values] for name, values in samples.items()}
            for name, med in medians(rates, ("ttft_s", "decode_tok_s")).items():
                rows.append({"context": context, "batch": batch, "variant": name, **med})
                print(f"ctx {context:>5} batch {batch}  {name:<15} ttft {med['ttft_s']:7.3f} s  decode {med['decode_tok_s']:7.1f} tok/s", flush=True)
    return rows, list(dict.fromkeys(skipped))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(parser, threads_help="threads of the steerc engines (default: all cores) and of llama.cpp (default: 2)")
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
    parser.add_argument("--llama-flash-attn", action="store_true", help="llama.cpp with flash attention (llama-cpp-python's default: off)")
    parser.add_argument("--workdir", default="bench-work", help="where the genai builder's models are cached")
    parser.add_argument("--out", default="bench-decode.json")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw decode tokens/s against context length here")
    parser.add_argument("--plot-batch", type=int, default=1, help="the batch size the plot shows")
    parser.add_argument("--label", nargs="+", default=[], metavar="VARIANT=TEXT", help="legend text for a variant in the plot")
    parser.add_argument("--title", default=None, help="the plot's title")
    parser.add_argument("--from-json", default=None, metavar="JSON", help="report (tables, plot) a recorded run instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = run(args, argv)
    report(result, args)


def run(args, argv: list[str] | None) -> dict:
    compare_items = [item for group in args.compare for item in group]
    ratio_items = [item for group in args.ratio for item in group]
    engine = load_engine(args.engine, args.threads, args.backend)
    runners, notes, compared, max_seq = runners_for(args, engine, compare_items)
    for name, note in notes.items():
        print(f"skipped {name}: {note}", flush=True)
    if not runners:
        print("nothing to run", file=sys.stderr)
    load_start = os.getloadavg()
    rows, skipped = measure(args, engine, runners, max_seq)
    names = list(runners)
    pairs = default_pairs(names, compared)
    for item in ratio_items:
        a, _, b = item.partition("/")
        if (a, b) not in pairs:
            pairs.append((a, b))
    result = {"machine": {**machine(), "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
              "versions": package_versions(), "engine": str(args.engine), "compare": dict(i.partition("=")[::2] for i in compare_items),
              "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads,
              "llama_cpp": {"threads": args.threads or 2, "flash_attn": args.llama_flash_attn},
              "genai_note": notes.get("genai"), "notes": notes, "skipped": skipped, "variants": names, "compared": compared,
              "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows, "ratios": target_ratios(rows, compared), "pair_ratios": pair_ratios(rows, pairs)}
    write_json(args.out, result)
    return result


def report(result: dict, args) -> None:
    """The markdown tables of a run (and its plot with ``--plot``)."""
    rows, pairs_out = result["rows"], result.get("pair_ratios") or []
    ratios = target_ratios(rows, list(result.get("compare") or {}))  # from the rows: runs recorded before a ratio existed have it too
    names = result.get("variants") or list(dict.fromkeys(r["variant"] for r in rows))
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
    for line in result.get("skipped", []):
        print(f"skipped {line}")
    for name, note in (result.get("notes") or {}).items():
        print(f"{name}: {note}")
    if args.plot:
        labels = dict(item.partition("=")[::2] for item in args.label)
        print(plot_decode(result, args.plot, args.plot_batch, args.title, labels))


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
