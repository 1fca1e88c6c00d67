"""Opset choice for the ONNX backend, measured: fused ``Attention`` (opset 23) vs decomposed (20).

Compiles the same model at both opsets, then, in one process and interleaved (A B A B ...)
so machine noise hits both alike, times with ONNX Runtime on CPU:
prefill of N tokens (past 0) and decode steps (one token after N cached), steered and
unsteered. Prints a table of medians and opset-23 / opset-20 ratios; writes JSON.

    python tools/bench_opset.py [MODEL] [--contexts 128 512] [--repeats 5] [--out bench-opset.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from steerc.backends.onnx import create_session
from steerc.build import compile_engine, read_manifest
from steerc.progress import StageTracker
from steerc.settings import CompileSettings


def _feeds(manifest, context: int, decode: bool, steered: bool, seed: int = 0):
    g = manifest["geometry"]
    rng = np.random.default_rng(seed)
    past_len, new = (context, 1) if decode else (0, context)
    total = past_len + new
    feed = [
        rng.integers(0, g["vocab_size"], (1, new), dtype=np.int64),
        np.arange(past_len, total, dtype=np.int64)[None],
        np.ones((1, total), np.int64),
        *[rng.standard_normal((1, g["num_kv_heads"], past_len, g["head_dim"])).astype(np.float32) for _ in range(2 * g["num_layers"])],
        (rng.standard_normal((1, g["num_layers"], g["num_heads"], total)) * steered).astype(np.float32),
    ]
    return dict(zip([s["name"] for s in manifest["inputs"]], feed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--out", default="bench-opset.json")
    parser.add_argument("--workdir", default=None, help="keep the engines here (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="steerc-bench-opset-"))
    engines, compile_info = {}, {}
    for opset in (23, 20):
        tracker = StageTracker()
        start = time.perf_counter()
        manifest = compile_engine(args.model, work / f"opset{opset}", CompileSettings(opset=opset), force=True, tracker=tracker)
        compile_info[opset] = {
            "compile_s": time.perf_counter() - start,
            "export_s": tracker.timings.get("export"),
            "nodes": sum(manifest["backend"]["op_counts"].values()),
            "attention_ops": {k: v for k, v in manifest["backend"]["op_counts"].items() if k in ("Attention", "Softmax")},
            "onnx_bytes": (work / f"opset{opset}" / "model.onnx").stat().st_size,
            "verify": manifest["verify"],
        }
        print(f"opset {opset}: compiled in {compile_info[opset]['compile_s']:.0f} s, {compile_info[opset]['nodes']} nodes", flush=True)
        engines[opset] = (create_session(work / f"opset{opset}" / "model.onnx"), read_manifest(work / f"opset{opset}", check_files=False))

    rows = []
    for context in args.contexts:
        for phase in ("prefill", "decode"):
            for steered in (False, True):
                feeds = {o: _feeds(m, context, phase == "decode", steered) for o, (s, m) in engines.items()}
                for opset, (session, _) in engines.items():  # warm-up
                    session.run(["logits"], feeds[opset])
                times = {23: [], 20: []}
                steps = args.decode_steps if phase == "decode" else 1
                for _ in range(args.repeats):
                    for opset, (session, _) in engines.items():
                        start = time.perf_counter()
                        for _ in range(steps):
                            session.run(["logits"], feeds[opset])
                        times[opset].append((time.perf_counter() - start) / steps)
                med = {o: statistics.median(t) for o, t in times.items()}
                rows.append({"context": context, "phase": phase, "steered": steered, "opset23_ms": med[23] * 1e3, "opset20_ms": med[20] * 1e3, "ratio_23_over_20": med[23] / med[20]})
                print(f"{context:>6} {phase:<8} steered={steered!s:<5} opset23 {med[23] * 1e3:8.1f} ms  opset20 {med[20] * 1e3:8.1f} ms  ratio {med[23] / med[20]:.2f}", flush=True)

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": __import__("os").cpu_count()},
        "model": args.model or "smollm2-135m-instruct",
        "repeats": args.repeats,
        "compile": compile_info,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
