"""Reuse benchmark: time to first token of a stored steered context vs no cache vs AutoPASTA.

Contexts of 512 / 1024 / 2048 tokens are built from SQuAD dev passages (``../shared/data``),
the question is one of the first passage's. Variants, interleaved per repeat, medians:

* ``(a) reused``      the runtime's default method, context prepared once and held in the
                      in-memory store: only the query is prefilled (also from the disk store);
                      beside it ``none`` (the plain prefix-cached context), ``query``
                      (query-aware evidence: one more analysis call of the question, then the
                      question re-prefilled with the bias) and ``llmsteer``, all reused
* ``(b) no cache``    the same request with no store: full prefill of instruction + context + query
* ``(c) autopasta``   per query: the model generates the key sentence over the *cached* plain
                      context (generous to the baseline), the sentence is matched back to the
                      context, the context is prefilled afresh with PASTA steering (steer_at
                      both, as PASTA steers the prompt); ``(c') decode`` skips that prefill and
                      steers only at query time (a lower bound for AutoPASTA)
* preparation         LLMSteer's one-time context preparation (two importance prefills, plus a
                      steered third prefill for steer_at both) relative to one plain prefill

Time to first token is measured from the request (context text and query) to the first
answer token, with ``max_new_tokens=1``. Writes JSON and prints a markdown table.

``--redis URL`` adds ``reused_redis``: the default method's context read from a Redis server
(no memory tier, so every request fetches and verifies it). ``--reuse-only`` times only the
reused variants (every tier), not the no-cache, AutoPASTA and preparation baselines.

    python tools/bench_reuse.py [ENGINE_DIR] [--contexts 512 1024 2048] [--repeats 3] [--redis URL] [--reuse-only] [--out docs/bench/reuse.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

import numpy as np

from harness import BENCH_DIR, add_engine_args, interleave, load_engine, medians, squad_context, write_json


def ttft(steerer, context: str, query: str) -> tuple[float, object]:
    start = time.perf_counter()
    answer = steerer.answer(context, query, max_new_tokens=1)
    return time.perf_counter() - start, answer


def timed(fn) -> tuple[float, None]:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_args(parser)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redis", default=None, help="also time reuse from this Redis server (redis://host:port/db)")
    parser.add_argument("--reuse-only", action="store_true", help="time only the reused variants (every tier)")
    parser.add_argument("--out", default=str(BENCH_DIR / "reuse.json"))
    args = parser.parse_args()
    engine = load_engine(args.engine, args.threads, args.backend)
    if args.reuse_only:
        return reuse_only(args, engine)

    from steerc.runtime import prefill
    from steerc.steering import PromptLayout, SteerConfig, Steerer
    from steerc.stores import DiskStore, MemoryStore

    config = SteerConfig()
    rows = []
    for length in args.contexts:
        context, query, gold = squad_context(engine.tokenizer, length)
        disk_root = tempfile.mkdtemp(prefix="steerc-bench-")
        reused = Steerer(engine, config, MemoryStore())
        others = {f"{m}_reused": Steerer(engine, config.with_method(m), MemoryStore()) for m in ("none", "query", "llmsteer")}
        from_disk = Steerer(engine, config, DiskStore(disk_root))
        nocache = Steerer(engine, config.with_method("none"), None)
        plain_store = MemoryStore()
        auto_both = Steerer(engine, config.with_method("autopasta", steer_at="both"), plain_store)
        auto_decode = Steerer(engine, config.with_method("autopasta", steer_at="decode"), plain_store)
        prep_both = config.with_method("llmsteer", steer_at="both")
        layout = PromptLayout.for_tokenizer(engine.tokenizer)
        ids = np.concatenate([layout.head_ids(config.prefixes[0]), layout.context_ids(context)[0]])[None]
        # Warm-up and one-time preparation (the stores then hold the contexts).
        for s in (reused, from_disk, auto_both, *others.values()):
            s.answer(context, query, max_new_tokens=1)

        def from_fresh_disk():
            from_disk.store = DiskStore(disk_root)  # a fresh handle: read from the file, nothing in memory
            return ttft(from_disk, context, query)

        runs = {"reused": lambda: ttft(reused, context, query), "reused_disk": from_fresh_disk,
                **{name: (lambda s=s: ttft(s, context, query)) for name, s in others.items()},
                "nocache": lambda: ttft(nocache, context, query), "autopasta": lambda: ttft(auto_both, context, query),
                "autopasta_decode": lambda: ttft(auto_decode, context, query),
                "plain_prefill": lambda: timed(lambda: prefill(engine, ids, np.ones_like(ids), engine.new_cache(1), chunk=512)),
                "prepare_decode": lambda: timed(lambda: Steerer(engine, config.with_method("llmsteer"), None).prepare(context)),
                "prepare_both": lambda: timed(lambda: Steerer(engine, prep_both, None).prepare(context))}
        samples = interleave(runs, args.repeats, warmup=False)
        med = medians({name: [seconds for seconds, _ in values] for name, values in samples.items()})
        answers = {name: values[-1][1] for name, values in samples.items()}
        if answers["reused"].cache == "miss" or answers["reused_disk"].cache == "miss":
            raise SystemExit(f"expected store hits, got {answers['reused'].cache} / {answers['reused_disk'].cache}")
        row = {
            "context_tokens": length,
            "query_tokens": answers["reused"].query_tokens,
            "median_s": med,
            "speedup_reused_vs_nocache": med["nocache"] / med["reused"],
            "speedup_reused_vs_autopasta": med["autopasta"] / med["reused"],
            "speedup_reused_vs_autopasta_decode": med["autopasta_decode"] / med["reused"],
            "speedup_disk_vs_nocache": med["nocache"] / med["reused_disk"],
            "prepare_decode_vs_plain_prefill": med["prepare_decode"] / med["plain_prefill"],
            "prepare_both_vs_plain_prefill": med["prepare_both"] / med["plain_prefill"],
            "selected_tokens": answers["reused"].selected_tokens,
            "query_vs_none_reused": med["query_reused"] / med["none_reused"],
            "query_vs_autopasta": med["query_reused"] / med["autopasta"],
            "query_vs_autopasta_decode": med["query_reused"] / med["autopasta_decode"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json(args.out, {"engine": str(args.engine), "config": config.to_dict(), "repeats": args.repeats, "rows": rows})
    print("\n| context | (a) reused TTFT | from disk | (b) no cache | (c) AutoPASTA | (c') AutoPASTA, decode-only | (b)/(a) | (c)/(a) | (c')/(a) | prepare (decode) / plain prefill | prepare (both) / plain prefill |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_s"]
        print(f"| {r['context_tokens']} | {m['reused']:.3f} s | {m['reused_disk']:.3f} s | {m['nocache']:.2f} s | {m['autopasta']:.2f} s | {m['autopasta_decode']:.2f} s | "
              f"**{r['speedup_reused_vs_nocache']:.1f}x** | **{r['speedup_reused_vs_autopasta']:.1f}x** | {r['speedup_reused_vs_autopasta_decode']:.1f}x | "
              f"{r['prepare_decode_vs_plain_prefill']:.2f} | {r['prepare_both_vs_plain_prefill']:.2f} |")
    print("\n| context | none, reused | query, reused | llmsteer, reused | AutoPASTA | query / none | query / AutoPASTA | query / AutoPASTA decode-only |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_s"]
        print(f"| {r['context_tokens']} | {m['none_reused']:.3f} s | {m['query_reused']:.3f} s | {m['llmsteer_reused']:.3f} s | {m['autopasta']:.2f} s | "
              f"**{r['query_vs_none_reused']:.2f}x** | **{r['query_vs_autopasta']:.3f}x** | {r['query_vs_autopasta_decode']:.3f}x |")


def _without_selector_graph(engine):
    """A second handle on ``engine``'s folder whose manifest hides the selector graph (selection
    then runs on the analysis graph, as on engines compiled before it), for a same-run comparison."""
    other = load_engine(str(engine.folder), engine.threads, None)
    other.manifest = {k: v for k, v in other.manifest.items() if k != "selector"}
    return other


def reuse_only(args, engine) -> None:
    """Time to first token of the default method's stored context from each tier (and of the
    other methods from memory), interleaved, medians; JSON to ``--out``, a table to stdout."""
    from steerc.steering import SteerConfig, Steerer
    from steerc.stores import DiskStore, MemoryStore

    config = SteerConfig()
    rows = []
    for length in args.contexts:
        context, query, _ = squad_context(engine.tokenizer, length)
        disk_root = tempfile.mkdtemp(prefix="steerc-bench-")
        variants = {"reused": Steerer(engine, config, MemoryStore()), "reused_disk": Steerer(engine, config, DiskStore(disk_root))}
        variants.update({f"{m}_reused": Steerer(engine, config.with_method(m), MemoryStore()) for m in ("none", "llmsteer")})
        if config.method == "query":
            # The same engine with its selector graph hidden: selection on the full analysis graph (engines compiled before it).
            if engine.selector_layers:
                variants["reused_analysis_graph"] = Steerer(_without_selector_graph(engine), config, MemoryStore())
            if config.options.hedge != "off" or config.options.self_check or config.options.rank_by != "attention":
                variants["reused_unhedged"] = Steerer(engine, replace(config, hedge="off", self_check=0.0, rank_by="attention"), MemoryStore())
        redis = None
        if args.redis:
            from steerc.stores.redis import RedisStore

            redis = RedisStore(args.redis, prefix=f"bench-reuse:{time.time_ns()}:")
            variants["reused_redis"] = Steerer(engine, config, redis)
        for s in variants.values():
            s.answer(context, query, max_new_tokens=1)

        def hit(name, steerer):
            if name == "reused_disk":
                steerer.store = DiskStore(disk_root)  # a fresh handle: read from the file
            seconds, answer = ttft(steerer, context, query)
            if answer.cache == "miss":
                raise SystemExit(f"{name}: expected a store hit, got a miss")
            return seconds

        times = interleave({name: (lambda n=name, s=s: hit(n, s)) for name, s in variants.items()}, args.repeats, warmup=False)
        if redis is not None:
            redis.clear()
        row = {"context_tokens": length, "median_s": medians(times), "all_s": times}
        rows.append(row)
        print(json.dumps(row["median_s"]), flush=True)
    write_json(args.out, {"engine": str(args.engine), "repeats": args.repeats, "rows": rows})
    names = list(rows[0]["median_s"])
    print("\n| context | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['context_tokens']} | " + " | ".join(f"{r['median_s'][n] * 1e3:.1f} ms" for n in names) + " |")


if __name__ == "__main__":
    main()
