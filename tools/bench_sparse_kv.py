"""Speed of attending to fewer context keys: Q-LLM block retrieval (``qllm``) and compacted stored
contexts (``keep``), each against the plain reused context (``none``) in the same run.

Contexts of 512 and 2048 tokens are built from SQuAD dev passages (``../shared/data``), with one of
the first passage's questions. Every variant's context is prepared once and held in its store, so
the timings are of a *reused* context. Interleaved per repeat, medians:

* **time to first token on reuse**: the request (context text and query) to the first answer token;
* **decode tokens/s**: 64 tokens after the first, forced (no stop token), on the KV and bias the
  method's plan chose;
* **share of context keys attended** per decode step (qllm: initial + retrieved blocks + local
  window; keep: the stored share);
* compaction only: the **store entry bytes** (the checksummed safetensors a disk or Redis store
  holds) and, with ``--redis URL``, the **Redis fetch plus verify** time of that entry (the
  checksum is verified on every read).

Ratios are against ``none`` measured in the same run. Writes JSON and prints markdown tables.

    python tools/bench_sparse_kv.py [ENGINE] [--contexts 512 2048] [--repeats 5] [--redis redis://127.0.0.1:6379/0] [--out docs/bench/sparse_kv.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

from harness import BENCH_DIR, add_engine_args, interleave, load_engine, squad_context, write_json

DECODE_TOKENS = 64


def decode_rate(steerer, engine) -> float:
    """Tokens/s of ``DECODE_TOKENS`` forced decode steps on the last plan's KV and bias."""
    from steerc.runtime import generate

    plan, prepared = steerer.last_plan, steerer.last_context[0]
    query_ids = plan.query_ids if plan.query_ids is not None else steerer.layout.query_ids(steerer.config.prefixes[0], steerer.last_query)
    offset = plan.position_offset if plan.position_offset is not None else prepared.position_offset
    steps = generate(engine, query_ids[None], cache=plan.kv, steering=plan.steering, max_new_tokens=DECODE_TOKENS + 1, stop_token_ids=set(),
                     position_offset=offset)
    next(steps)  # prefill and the first token
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_args(parser)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--redis", default=None, help="a Redis URL to time fetch + verify of the stored entries")
    parser.add_argument("--out", default=str(BENCH_DIR / "sparse_kv.json"))
    args = parser.parse_args()

    from steerc.steering import SteerConfig, Steerer
    from steerc.steering.prepared import load_prepared, save_prepared  # the stored form of a prepared context: no public API yet
    from steerc.steering.stored_kv import kv_entry
    from steerc.stores import MemoryStore, entry_to_bytes

    engine = load_engine(args.engine, args.threads, args.backend)
    base = SteerConfig(method="none")
    variants = {"none": base, "qllm": base.with_method("qllm"), "qllm answer": base.with_method("qllm", retrieve_for="answer")}
    variants.update({f"keep {k:g}": replace(base, keep=k) for k in args.keeps})
    redis = None
    if args.redis:
        from steerc.stores.redis import RedisStore

        redis = RedisStore(args.redis, prefix=f"bench:{time.time_ns()}:")
    rows = []
    for length in args.contexts:
        context, query, _ = squad_context(engine.tokenizer, length)
        steerers = {name: Steerer(engine, config, MemoryStore(1 << 34)) for name, config in variants.items()}
        for s in steerers.values():  # prepare once (the stores then hold the contexts)
            s.answer(context, query, max_new_tokens=1)
            s.last_query = query
        shares, entry_bytes = {}, {}
        for name, s in steerers.items():
            prepared = s.last_context[0]
            stored = prepared.to_stored()  # the entry and, apart, its KV (stored once per context)
            entry_bytes[name] = len(entry_to_bytes(prepared.key, stored)) + len(entry_to_bytes(prepared.kv_key, kv_entry(prepared.kv)))
            if redis is not None:
                save_prepared(redis, prepared)
            plan = s.last_plan
            shares[name] = float(plan.selected[0].mean()) if name.startswith("qllm") else prepared.kv.length / prepared.full_length

        def reuse(name, s) -> dict:
            start = time.perf_counter()
            answer = s.answer(context, query, max_new_tokens=1)
            out = {"ttft": time.perf_counter() - start}
            if answer.cache == "miss":
                raise SystemExit(f"{name}: expected a store hit on reuse")
            out["decode"] = decode_rate(s, engine)
            if redis is not None:
                key = s.last_context[0].key
                start = time.perf_counter()
                if load_prepared(redis, key)[0] is None:
                    raise SystemExit(f"{name}: the Redis entry is missing")
                out["fetch"] = time.perf_counter() - start
            return out

        samples = interleave({name: (lambda n=name, s=s: reuse(n, s)) for name, s in steerers.items()}, args.repeats, warmup=False)
        med = {name: {k: statistics.median(v[k] for v in values) if k in values[0] else None for k in ("ttft", "decode", "fetch")}
               for name, values in samples.items()}
        none = med["none"]
        row = {"context_tokens": length, "median": med, "entry_bytes": entry_bytes, "key_share": shares,
               "ttft_vs_none": {n: m["ttft"] / none["ttft"] for n, m in med.items()},
               "decode_vs_none": {n: m["decode"] / none["decode"] for n, m in med.items()},
               "bytes_vs_none": {n: entry_bytes[n] / entry_bytes["none"] for n in med},
               "fetch_vs_none": {n: m["fetch"] / none["fetch"] for n, m in med.items()} if redis is not None else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json(args.out, {"engine": str(args.engine), "threads": args.threads, "repeats": args.repeats, "decode_tokens": DECODE_TOKENS,
                          "variants": {n: c.to_dict() for n, c in variants.items()}, "rows": rows})
    print("\n| context | variant | keys attended | TTFT on reuse | x none | decode tok/s | x none | entry MB | x none | Redis fetch+verify | x none |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for n, m in r["median"].items():
            fetch = f"{m['fetch'] * 1e3:.1f} ms | {r['fetch_vs_none'][n]:.2f}" if m["fetch"] is not None else "- | -"
            print(f"| {r['context_tokens']} | {n} | {r['key_share'][n]:.0%} | {m['ttft']:.3f} s | {r['ttft_vs_none'][n]:.2f} | {m['decode']:.1f} | "
                  f"{r['decode_vs_none'][n]:.2f} | {r['entry_bytes'][n] / 1e6:.1f} | {r['bytes_vs_none'][n]:.2f} | {fetch} |")


if __name__ == "__main__":
    main()
