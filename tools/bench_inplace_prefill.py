"""Time to first token of a chunked prefill on a `--kv in-place` engine: buffers of the whole
prompt's capacity up front (what `prefill` did before 2026-12-02) against buffers of exactly
past + chunk per chunk (the concat contract, what it does now), with the concat engine as the
baseline, in the same run.

    PYTHONPATH=. python tools/bench_inplace_prefill.py engines/smollm2-int4 engines/smollm2-int4-inplace [--context 2016] [--chunk 256]

Random token ids, medians of 3 after one warm-up, the three variants interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from harness import load_engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("concat", help="an engine compiled with the concat KV layout")
    p.add_argument("in_place", help="the same model compiled with --kv in-place")
    p.add_argument("--context", type=int, default=2016)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from steerc.runtime.generate import positions_for, prefill

    concat, in_place = load_engine(args.concat, args.threads), load_engine(args.in_place, args.threads)
    ids = np.random.default_rng(0).integers(100, concat.geometry.vocab_size - 1, size=(1, args.context))
    mask = np.ones_like(ids)
    zeros = np.zeros((1, in_place.geometry.num_layers, in_place.geometry.num_heads, args.context), np.float32)

    def whole_capacity() -> None:  # the old path: one buffer of the whole prompt, every chunk attends over all of it
        cache = in_place.buffers_for(in_place.new_cache(1), args.context, exact=True)
        for start in range(0, args.context, args.chunk):
            end = min(args.context, start + args.chunk)
            in_place.forward(ids[:, start:end], positions_for(mask[:, :end], end - start, 0), mask[:, :end], cache, zeros[..., :end])

    variants = {"concat": lambda: prefill(concat, ids, mask, concat.new_cache(1), chunk=args.chunk),
                "in-place, whole-prompt buffers": whole_capacity,
                "in-place, per chunk (now)": lambda: prefill(in_place, ids, mask, in_place.new_cache(1), chunk=args.chunk)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["concat"])
    print(f"| variant | prefill of {args.context} tokens (s) | / concat |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.3f} | {statistics.median(t) / base:.2f}x |")


if __name__ == "__main__":
    main()
