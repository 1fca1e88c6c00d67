"""KVs at rest as the engine's dtype, fp16 or int8 (``--kv-store-dtype``): bytes per context, disk
fetch + verify + decode time, and time to first token on reuse, in one run.

    python tools/bench_store_dtype.py [ENGINE] [--contexts 512 1900] [--repeats 5] [--redis URL] [--out docs/bench/store-dtype.json]

Each context (consecutive SQuAD dev passages cut at N tokens, with a question of the first one)
is prepared once per scheme with the default method (``query``) into its own disk store
(no memory tier, so every reuse reads the disk), or with ``--redis URL`` into a Redis store (its
own key prefix per scheme, removed after). Then, interleaved: the KV entry read back
(``get``: the file or Redis value read and its checksum verified, then decoded to the engine's dtype)
and a whole reused answer's time to first token (the prepared entry and its KV from disk, the
question's selection and prefill). Medians; ratios against ``engine`` in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness import add_engine_args, interleave, load_engine, medians, squad_context, write_json

SCHEMES = ("engine", "fp16", "int8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engine_args(p)
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 1900])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--redis", metavar="URL", help="measure a Redis store at URL (redis://host:port/db) instead of a disk store")
    p.add_argument("--out")
    args = p.parse_args()

    from steerc.steering.answer import Steerer
    from steerc.steering.config import SteerConfig
    from steerc.steering.stored_kv import kv_from_entry
    from steerc.stores import DiskStore
    from steerc.stores.redis import RedisStore

    def open_store(root: Path, name: str):
        return RedisStore(args.redis, prefix=f"bench-store-dtype:{name}:") if args.redis else DiskStore(root / name)

    def stored_keys(store) -> list[str]:
        if isinstance(store, RedisStore):
            return [n.decode()[len(store.prefix):] for n in store.client.scan_iter(match=store.prefix + "*") if len(n) == len(store.prefix) + 64]
        return [path.stem for path in store.root.glob("*/*.safetensors")]

    def entry_size(store, key: str) -> int:
        return store.client.strlen(store._name(key)) if isinstance(store, RedisStore) else store.path(key).stat().st_size

    engine = load_engine(args.engine, args.threads, args.backend)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.contexts:
            context, question, _ = squad_context(engine.tokenizer, n)
            stores, kv_keys = {}, {}
            for scheme in SCHEMES:
                store = open_store(Path(tmp), f"{n}-{scheme}")
                store.clear()
                store.kv_scheme = scheme
                Steerer(engine, SteerConfig(), store).answer(context, question, max_new_tokens=1)  # prepare and store
                kv_keys[scheme] = next(k for k in stored_keys(store) if store.get(k).meta.get("kind") == "kv")
                stores[scheme] = store

            def fetch(scheme):
                start = time.perf_counter()
                kv_from_entry(kv_keys[scheme], stores[scheme].get(kv_keys[scheme]))
                return (time.perf_counter() - start,)

            def reuse(scheme):
                answer = Steerer(engine, SteerConfig(), stores[scheme]).answer(context, question, max_new_tokens=1)
                assert answer.cache == stores[scheme].tier, answer.cache
                return (answer.ttft_s,)

            fetched = medians(interleave({s: (lambda s=s: fetch(s)) for s in SCHEMES}, args.repeats), ["s"])
            ttft = medians(interleave({s: (lambda s=s: reuse(s)) for s in SCHEMES}, args.repeats), ["s"])
            for scheme in SCHEMES:
                size, base = entry_size(stores[scheme], kv_keys[scheme]), entry_size(stores["engine"], kv_keys["engine"])
                row = {"context": n, "store": stores[scheme].tier, "scheme": scheme, "kv_entry_mb": round(size / 1e6, 2), "bytes_vs_engine": round(size / base, 3),
                       "fetch_verify_decode_ms": round(fetched[scheme]["s"] * 1e3, 1), "fetch_vs_engine": round(fetched[scheme]["s"] / fetched["engine"]["s"], 2),
                       "ttft_reuse_s": round(ttft[scheme]["s"], 4), "ttft_vs_engine": round(ttft[scheme]["s"] / ttft["engine"]["s"], 2)}
                rows.append(row)
                print(row, flush=True)
            for store in stores.values():
                store.clear()
    print("\n| context | store | scheme | KV entry MB | x engine | fetch+verify+decode ms | x engine | TTFT on reuse | x engine |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['store']} | {r['scheme']} | {r['kv_entry_mb']} | {r['bytes_vs_engine']} | {r['fetch_verify_decode_ms']} | {r['fetch_vs_engine']} | "
              f"{r['ttft_reuse_s']} s | {r['ttft_vs_engine']} |")
    if args.out:
        write_json(args.out, {"run": {"engine": args.engine, "contexts": args.contexts, "repeats": args.repeats, "threads": args.threads, "store": "redis" if args.redis else "disk"}, "rows": rows})


if __name__ == "__main__":
    main()
