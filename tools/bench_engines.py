"""A/B two engine folders of the same model in one run (interleaved): what a change bought.

Times a prefill of N tokens and decode steps after N cached tokens, batch 1, zero bias, and
prints B/A ratios (below 1 = B faster).

    python tools/bench_engines.py ENGINE_A ENGINE_B [--contexts 512 2048] [--steps 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from steerc.runtime import Engine, decode_one_token, prefill

    engines = {"A": Engine.load(args.a), "B": Engine.load(args.b)}
    rows = []
    for context in args.contexts:
        ids = np.random.default_rng(0).integers(100, 30000, (1, context))
        mask = np.ones((1, context), np.int64)
        caches = {k: prefill(e, ids, mask, e.new_cache(1))[1] for k, e in engines.items()}
        times = {(k, phase): [] for k in engines for phase in ("prefill", "decode")}
        for _ in range(args.repeats):
            for key, engine in engines.items():
                start = time.perf_counter()
                prefill(engine, ids, mask, engine.new_cache(1))
                times[key, "prefill"].append(time.perf_counter() - start)
                cache, step_mask = caches[key], mask
                start = time.perf_counter()
                for _ in range(args.steps):
                    step_mask = np.concatenate([step_mask, np.ones((1, 1), np.int64)], 1)
                    _, cache = decode_one_token(engine, np.array([100]), step_mask, cache)
                times[key, "decode"].append((time.perf_counter() - start) / args.steps)
        for phase in ("prefill", "decode"):
            a, b = statistics.median(times["A", phase]), statistics.median(times["B", phase])
            rows.append({"context": context, "phase": phase, "a_ms": a * 1e3, "b_ms": b * 1e3, "b_over_a": b / a})
            print(f"context {context:>5} {phase:<8} A {a * 1e3:8.1f} ms  B {b * 1e3:8.1f} ms  B/A {b / a:.3f}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"a": args.a, "b": args.b, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
