"""Cost of the importance output: the analysis graph against the plain decoder graph, one run.

The analysis graph is the decoder graph plus ``attn_importance`` (the attention each key
receives, recomputed beside fused attention). Measured, interleaved per repeat, medians:

* prefill of N tokens (chunks of 512, as the runtime runs it) on each graph: the cost of
  preparing a context with importance against one plain prefill;
* one decode step after N cached tokens on each graph: what every decode step would pay if
  the importance were an extra output of the one graph instead of a second graph.

    python tools/bench_importance.py ENGINE_DIR [--lengths 512 1024 2048] [--repeats 5] [--out docs/bench/importance.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "importance.json"))
    args = parser.parse_args()

    from steerc.runtime import Engine
    from steerc.runtime.generate import positions_for, prefill
    from steerc.steering.selection import importance_prefill

    engine = Engine.load(args.engine)
    g = engine.geometry
    rows = []
    for n in args.lengths:
        ids = np.random.default_rng(0).integers(100, 40000, n)
        _, cache = prefill(engine, ids[None], np.ones((1, n), np.int64), engine.new_cache(1), chunk=512)
        importance_prefill(engine, ids[:64])  # opens the analysis session outside the timing
        mask = np.ones((1, n + 1), np.int64)
        step = (np.array([[42]]), positions_for(mask, 1), mask, cache, np.zeros((1, g.num_layers, g.num_heads, n + 1), np.float32))
        t = {"prefill_plain": [], "prefill_importance": [], "decode_plain": [], "decode_importance": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            prefill(engine, ids[None], np.ones((1, n), np.int64), engine.new_cache(1), chunk=512)
            t["prefill_plain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            importance_prefill(engine, ids, chunk=512)
            t["prefill_importance"].append(time.perf_counter() - start)
            for _ in range(5):
                start = time.perf_counter()
                engine.forward(*step)
                t["decode_plain"].append(time.perf_counter() - start)
                start = time.perf_counter()
                engine.analyze(*step)
                t["decode_importance"].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in t.items()}
        row = {"tokens": n, "median_s": med, "prefill_ratio": med["prefill_importance"] / med["prefill_plain"],
               "decode_ratio": med["decode_importance"] / med["decode_plain"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"engine": str(args.engine), "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print("\n| tokens | plain prefill | prefill with importance | ratio | plain decode step | decode step with importance | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_s"]
        print(f"| {r['tokens']} | {m['prefill_plain']:.2f} s | {m['prefill_importance']:.2f} s | **{r['prefill_ratio']:.2f}x** | "
              f"{1000 * m['decode_plain']:.1f} ms | {1000 * m['decode_importance']:.1f} ms | **{r['decode_ratio']:.2f}x** |")


if __name__ == "__main__":
    main()
