"""Decode speed of the in-place KV step graph against today's concat graph, in one run.

    python tools/bench_kv_inplace.py ENGINE_CONCAT ENGINE_INPLACE [--contexts 512 2048 4096] [--steps 32] [--repeats 5] [--json OUT]

Both engines must be compiled from the same model (``steerc compile ...`` and ``steerc compile
... --kv in-place``). At each context length a random prompt is prefilled once (512-token
chunks, concat engine) and both engines decode ``--steps`` greedy tokens after that cache, in
lockstep: each step runs on the concat engine, then on the in-place engine, at the same
position, so load from other processes hits both alike (this machine is shared).

* ``concat``: :func:`decode_one_token` on a :class:`KVCache` (the graph copies the past each step);
* ``in-place``: the cache moved once into :class:`KVBuffers` (capacity rounded up to the
  growth chunk, ``--chunk``, 128 by default; not timed: a generation pays it once) and every
  step writes into them (growing by one chunk, one copy, when full).

Each repeat starts again from the prefilled cache. The table gives the median ms per decode
step over all steps and repeats, tokens/s, the ratio of the medians in-place / concat and the
median of the per-step ratios. Every step checks that the greedy tokens are identical and
records the largest logit difference. ``--generate N`` first runs ``generate`` for N tokens
on a ``--generate-context``-token prompt (512) with each engine end to end (own prefill) and
compares the tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def lockstep(concat, in_place, cache, mask, first, steps):
    """Greedy decode ``steps`` tokens after ``cache`` on both engines in lockstep (a concat step,
    then an in-place step, at the same position); returns per-step seconds of each, and the
    largest logit difference. Raises SystemExit if the greedy tokens ever differ."""
    from steerc.runtime import decode_one_token

    buffers = in_place.buffers_for(cache, mask.shape[1] + 1)  # one copy per generation, outside the timing
    times = {"concat": [], "in-place": []}
    token = {"concat": first, "in-place": first}
    max_diff = 0.0
    for step in range(steps):
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
        t0 = time.perf_counter()
        ref, cache = decode_one_token(concat, token["concat"], mask, cache)
        t1 = time.perf_counter()
        got, buffers = decode_one_token(in_place, token["in-place"], mask, buffers)
        t2 = time.perf_counter()
        times["concat"].append(t1 - t0)
        times["in-place"].append(t2 - t1)
        token = {"concat": ref.argmax(-1), "in-place": got.argmax(-1)}
        if token["concat"].tolist() != token["in-place"].tolist():
            raise SystemExit(f"context {mask.shape[1] - step - 1}, step {step}: greedy tokens differ ({token})")
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
    return times, max_diff


def bench_context(concat, in_place, context: int, steps: int, repeats: int, seed: int = 0) -> dict:
    from steerc.runtime import prefill

    ids = np.random.default_rng(seed).integers(100, min(30000, concat.geometry.vocab_size), (1, context))
    mask = np.ones((1, context), np.int64)
    start = time.perf_counter()
    logits, cache = prefill(concat, ids, mask, concat.new_cache(1), chunk=512)
    prefill_s = time.perf_counter() - start
    first = logits.argmax(-1)
    times = {"concat": [], "in-place": []}
    max_diff = 0.0
    for _ in range(repeats):
        got, diff = lockstep(concat, in_place, cache, mask, first, steps)
        for name, values in got.items():
            times[name] += [v * 1e3 for v in values]
        max_diff = max(max_diff, diff)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"context": context, "steps": steps, "repeats": repeats, "prefill_s": prefill_s, "ms_per_step": med, "all_ms_per_step": times,
            "tokens_per_s": {k: 1e3 / v for k, v in med.items()}, "ratio": med["in-place"] / med["concat"],
            "paired_ratio": statistics.median(b / a for a, b in zip(times["concat"], times["in-place"])),
            "greedy_identical": True, "max_abs_logit_diff": max_diff}


def check_generate(concat, in_place, tokens: int, context: int = 512, seed: int = 1) -> dict:
    """End to end: ``generate`` with each engine (own prefill) on one prompt; tokens must match."""
    from steerc.runtime import generate

    ids = np.random.default_rng(seed).integers(100, min(30000, concat.geometry.vocab_size), (1, context))
    out = {name: [int(t[0]) for t in generate(engine, ids, max_new_tokens=tokens, stop_token_ids=set())]
           for name, engine in (("concat", concat), ("in-place", in_place))}
    if out["concat"] != out["in-place"]:
        raise SystemExit(f"generate: greedy tokens differ: concat {out['concat']} in-place {out['in-place']}")
    return {"context": context, "tokens": tokens, "greedy_identical": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("concat", help="engine folder compiled with the concat KV layout (today's default)")
    parser.add_argument("in_place", help="engine folder compiled with --kv in-place")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generate", type=int, default=64, help="tokens of the end-to-end generate check (0: skip)")
    parser.add_argument("--generate-context", type=int, default=512, help="prompt length of the generate check")
    parser.add_argument("--chunk", type=int, default=None, help="growth chunk of the KV buffers (default: the runtime's, 128)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    from steerc.runtime import Engine

    concat, in_place = Engine.load(args.concat, threads=args.threads), Engine.load(args.in_place, threads=args.threads)
    if args.chunk:
        in_place.kv_chunk = args.chunk
    if concat.kv_layout != "concat" or in_place.kv_layout != "in-place":
        raise SystemExit(f"expected a concat and an in-place engine, got {concat.kv_layout} and {in_place.kv_layout}")
    if concat.manifest["source"].get("sha256") != in_place.manifest["source"].get("sha256"):
        raise SystemExit("the two engines were compiled from different models")
    results = {"concat": args.concat, "in_place": args.in_place, "threads": args.threads, "chunk": in_place.kv_chunk, "contexts": []}
    if args.generate:
        results["generate"] = check_generate(concat, in_place, args.generate, args.generate_context)
        print(f"generate {args.generate} tokens after {args.generate_context}: greedy tokens identical", flush=True)
    print("| context | concat ms/step | in-place ms/step | concat tok/s | in-place tok/s | in-place / concat | paired ratio | max |Δlogit| |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for context in args.contexts:
        r = bench_context(concat, in_place, context, args.steps, args.repeats)
        results["contexts"].append(r)
        ms, tps = r["ms_per_step"], r["tokens_per_s"]
        print(f"| {context} | {ms['concat']:.1f} | {ms['in-place']:.1f} | {tps['concat']:.1f} | {tps['in-place']:.1f} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} | "
              f"{r['max_abs_logit_diff']:.1e} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
