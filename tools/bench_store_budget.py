"""A disk store under a byte budget fed a stream of new contexts: its size after every request, the
evictions, and whether reused answers change.

    python tools/bench_store_budget.py [ENGINE] [--budget-mb 100] [--contexts 40] [--kv-store-dtype engine] [--out docs/bench/store-budget.json]

Each request asks the first question of a new SQuAD dev paragraph with the default method
(``query``), preparing its context into a ``DiskStore(max_bytes=budget)`` (no memory tier). Every
fifth request also asks again about the first paragraph, whose context was evicted long ago by
then: it is prepared again, and its answer must equal the first one.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from harness import add_engine_args, load_engine, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engine_args(p)
    p.add_argument("--budget-mb", type=float, default=100)
    p.add_argument("--contexts", type=int, default=40)
    p.add_argument("--kv-store-dtype", default="engine")
    p.add_argument("--out")
    args = p.parse_args()

    from steerc.eval.data import load_squad
    from steerc.steering.answer import Steerer
    from steerc.steering.config import SteerConfig
    from steerc.stores import DiskStore

    engine = load_engine(args.engine, args.threads, args.backend)
    paragraphs = list(dict.fromkeys((ex.context, ex.question) for ex in load_squad()).keys())
    seen, first = set(), []
    for context, question in paragraphs:
        if context not in seen:
            seen.add(context)
            first.append((context, question))
        if len(first) == args.contexts:
            break
    budget = int(args.budget_mb * 1e6)
    rows, changed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        store = DiskStore(tmp, max_bytes=budget)
        store.kv_scheme = args.kv_store_dtype
        baseline = None
        for i, (context, question) in enumerate(first):
            start = time.perf_counter()
            answer = Steerer(engine, SteerConfig(), store).answer(context, question, max_new_tokens=16)
            baseline = baseline or answer.text
            again = None
            if i and i % 5 == 0:
                again = Steerer(engine, SteerConfig(), store).answer(*first[0], max_new_tokens=16)
                changed += again.text != baseline
            rows.append({"request": i + 1, "store_mb": round(store.bytes_used / 1e6, 2), "evictions": store.stats.evictions, "cache": answer.cache,
                         "first_context_again": None if again is None else again.cache, "seconds": round(time.perf_counter() - start, 2)})
            print(rows[-1], flush=True)
    peak = max(r["store_mb"] for r in rows)
    print(f"\nbudget {args.budget_mb} MB: peak {peak} MB over {len(rows)} new contexts, {rows[-1]['evictions']} evictions, "
          f"re-asked answers changed: {changed}")
    if args.out:
        write_json(args.out, {"run": {"engine": args.engine, "budget_mb": args.budget_mb, "contexts": args.contexts, "kv_store_dtype": args.kv_store_dtype},
                              "peak_mb": peak, "reasked_answers_changed": changed, "rows": rows})


if __name__ == "__main__":
    main()
