"""Continuous batching without HTTP: decode tokens/s of B rows in one ``DecodeBatch`` against
the same B rows decoded one after another with ``generate``, steered and unsteered, in one run.

    python tools/bench_batch.py [ENGINE] [--rows 1 2 4 8] [--context 512] [--new-tokens 32] [--repeats 3] [--out docs/bench/batch.json]

Every row continues its own context of ``--context`` random tokens (prefilled once, as a
registered context is) with a 16-token question; steered rows carry a random log-alpha bias
over their context keys (``log 0.3`` on half of them, every layer and head). Variants per row
count, interleaved (A B C D A B C D ...):

  sequential           each row decoded alone (``generate``), one after another
  sequential-steered   the same, steered
  batched              all rows in one ``DecodeBatch`` (one engine call per step)
  batched-steered      the same, steered

Reported: generated tokens/s over all rows (decode only: the question prefills are done before
the clock starts), batched / sequential, and steered / unsteered.
"""

from __future__ import annotations

import argparse
import time

from harness import add_engine_args, interleave, load_engine, medians, random_prompt, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engine_args(p)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()

    import numpy as np

    from steerc.runtime import SteerBias, generate, prefill
    from steerc.runtime.decode_batch import BatchRow, DecodeBatch

    engine = load_engine(args.engine, args.threads, args.backend)
    g, rng = engine.geometry, np.random.default_rng(0)
    n = max(args.rows)
    contexts = [random_prompt(g.vocab_size, 1, args.context, seed=i) for i in range(n)]
    questions = [random_prompt(g.vocab_size, 1, 16, seed=100 + i) for i in range(n)]
    caches = [prefill(engine, c, np.ones(c.shape, np.int64), engine.new_cache(1), chunk=256)[1] for c in contexts]
    biases = [SteerBias(np.where(rng.random((g.num_layers, g.num_heads, args.context)) < 0.5, np.log(0.3), 0).astype(np.float32)) for _ in range(n)]

    def prefilled(i, steered):
        mask = np.ones((1, args.context + 16), np.int64)
        return prefill(engine, questions[i], mask, caches[i], biases[i] if steered else None)

    def sequential(rows, steered):
        ready = [prefilled(i, steered) for i in range(rows)]
        start, tokens = time.perf_counter(), 0
        for i in range(rows):
            for _ in generate(engine, questions[i], cache=caches[i], steering=biases[i] if steered else None, max_new_tokens=args.new_tokens,
                              stop_token_ids=set(), prefilled=ready[i]):
                tokens += 1
        return (tokens / (time.perf_counter() - start),)

    def batched(rows, steered):
        batch, count = DecodeBatch(engine, rows), [0]
        for i in range(rows):
            logits, cache = prefilled(i, steered)
            batch.add(BatchRow(logits[0], cache, emit=lambda t: count.__setitem__(0, count[0] + 1), max_new_tokens=args.new_tokens,
                               steering=biases[i] if steered else None))
        start = time.perf_counter()
        while batch.rows:
            batch.step()
        return (count[0] / (time.perf_counter() - start),)

    results = []
    for rows in args.rows:
        runs = {"sequential": lambda r=rows: sequential(r, False), "sequential-steered": lambda r=rows: sequential(r, True),
                "batched": lambda r=rows: batched(r, False), "batched-steered": lambda r=rows: batched(r, True)}
        m = medians(interleave(runs, args.repeats), ["tokens_per_s"])
        row = {"rows": rows, **{f"{k}_tokens_per_s": round(v["tokens_per_s"], 1) for k, v in m.items()}}
        row["batched_vs_sequential"] = round(m["batched"]["tokens_per_s"] / m["sequential"]["tokens_per_s"], 2)
        row["steered_vs_unsteered_batched"] = round(m["batched-steered"]["tokens_per_s"] / m["batched"]["tokens_per_s"], 3)
        row["steered_vs_unsteered_sequential"] = round(m["sequential-steered"]["tokens_per_s"] / m["sequential"]["tokens_per_s"], 3)
        results.append(row)
        print(row, flush=True)
    print("\n| rows | sequential tok/s | batched tok/s | batched / sequential | steered / unsteered (batched) | steered / unsteered (sequential) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']} | {r['sequential_tokens_per_s']} | {r['batched_tokens_per_s']} | {r['batched_vs_sequential']}x | "
              f"{r['steered_vs_unsteered_batched']} | {r['steered_vs_unsteered_sequential']} |")
    if args.out:
        write_json(args.out, {"run": {"engine": args.engine, "context": args.context, "new_tokens": args.new_tokens, "repeats": args.repeats,
                                      "threads": args.threads}, "rows": results})


if __name__ == "__main__":
    main()
