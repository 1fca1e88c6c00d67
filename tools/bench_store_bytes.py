"""Store bytes per prepared context: how much the context store holds for one context, against
the bytes of that context's KV, as methods are added one after another.

One SQuAD dev context of ``--context-tokens`` tokens (consecutive passages: the harness's
``squad_context``, as ``tools/bench_reuse.py`` uses it) is answered once with each method in ``--methods`` order
(the first is the runtime default, ``query``), every method on the same disk store. After each
method the store folder's bytes are summed (every file: entries, shared KV, reference marks).
The KV's bytes are those of the plain KV of instruction + context (``KVCache.nbytes``).

Writes JSON and prints a markdown table: store bytes / KV bytes after each method, and what
each method added, as a share of the KV.

    python tools/bench_store_bytes.py [ENGINE_DIR] [--context-tokens 1024] [--methods query llmsteer ...] [--out docs/bench/store-bytes.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import add_engine_args, load_engine, squad_context, write_json

METHODS = ["query", "none", "llmsteer", "pasta", "autopasta", "qllm", "llmsteer-both"]


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_args(parser)
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--methods", nargs="+", default=METHODS, help=f"in order; 'llmsteer-both' is llmsteer with steer_at both (default: {' '.join(METHODS)})")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from steerc.steering import SteerConfig, Steerer
    from steerc.stores import DiskStore

    engine = load_engine(args.engine, args.threads, args.backend)
    context, query, _ = squad_context(engine.tokenizer, args.context_tokens)
    root = Path(tempfile.mkdtemp(prefix="steerc-store-bytes-"))
    store = DiskStore(root)
    base = SteerConfig()
    rows, kv_bytes, before = [], None, 0
    for name in args.methods:
        method, _, variant = name.partition("-")
        fields = {"steer_at": variant} if variant else {}
        if method == "pasta":
            fields["highlights"] = ((0, len(context) // 4),)
        config = base.with_method(method, **fields)
        steerer = Steerer(engine, config, store)
        answer = steerer.answer(context, query, max_new_tokens=1)
        prepared = steerer.last_context[0]
        if kv_bytes is None:
            kv_bytes = prepared.kv.nbytes if method != "llmsteer" or variant != "both" else None
        total = folder_bytes(root)
        rows.append({"method": name, "cache": answer.cache, "store_bytes": total, "added_bytes": total - before})
        before = total
        print(f"{name}: store {total / 2**20:.2f} MiB (+{rows[-1]['added_bytes'] / 2**20:.2f})", file=sys.stderr, flush=True)
    for row in rows:
        row["store_vs_kv"] = row["store_bytes"] / kv_bytes
        row["added_vs_kv"] = row["added_bytes"] / kv_bytes
    result = {"engine": str(args.engine), "context_tokens": args.context_tokens, "kv_bytes": kv_bytes, "rows": rows}
    if args.out:
        write_json(args.out, result)
    print(f"\nKV of the context: {kv_bytes / 2**20:.2f} MiB ({args.context_tokens} context tokens)\n")
    print("| after method | store / KV | added / KV |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['store_vs_kv']:.3f}x | {100 * row['added_vs_kv']:.1f}% |")


if __name__ == "__main__":
    main()
