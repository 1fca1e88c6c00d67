"""Shared Attention benchmark: engines compiled with ``--share-attention`` against the unshared one.

For each ``--groups`` choice (CLI syntax: ``20-29`` one group, ``20-24,25-29`` two), a shared
engine of the same model and ``max_seq_len`` as the baseline is compiled (a few minutes each on
2 cores) or, when its folder already holds one with those groups, reused. Then, in one run,
with the engines interleaved per repeat so machine noise hits all alike (medians):

* time to first token: prefill of a random ``C``-token prompt (in the runtime's 512-token
  chunks) plus the first token, batch 1;
* decode tokens/s: ``N - 1`` greedy tokens after the first, EOS ignored;
* KV bytes per token: the cache's real bytes after the prefill over its length (exact, not
  timed).

Reported as ratios against the unshared engine (``> 1`` = the shared engine is faster /
smaller). Quality is not measured here (``steerc eval ENGINE --dataset squad ...``).

    python tools/bench_shared_attention.py --groups 20-29 --groups 15-29 --groups 20-24,25-29 \\
        [--baseline engines/smollm2-135m-instruct] [--contexts 512 2048] [--new-tokens 32] [--repeats 3] \\
        [--engines-dir engines] [--out docs/bench/shared_attention.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from harness import BENCH_DIR, DEFAULT_ENGINE, engine_path, interleave, load_engine, medians, random_prompt, time_generate, write_json


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "steerc.json").read_text())


def _groups_text(groups) -> str:
    return ",".join(f"{g[0]}-{g[-1]}" for g in groups)


def shared_engine(baseline: Path, groups_text: str, engines_dir: Path) -> Path:
    """The folder of the baseline's model compiled with ``groups_text`` shared (compiled if absent)."""
    base = _manifest(baseline)
    folder = engines_dir / f"{baseline.name}-shared-{groups_text.replace(',', '_')}"
    if (folder / "steerc.json").is_file():
        manifest = _manifest(folder)
        got = (manifest.get("share_attention") or {}).get("groups") or []
        if _groups_text(got) != groups_text.replace(" ", "") or manifest["max_seq_len"] != base["max_seq_len"] \
                or manifest["source"].get("sha256") != base["source"].get("sha256"):
            raise SystemExit(f"{folder} holds another engine (groups {got}, max {manifest['max_seq_len']}); remove it or choose --engines-dir")
        print(f"reusing {folder}", flush=True)
        return folder
    spec = base["source"]["spec"]
    cmd = [sys.executable, "-m", "steerc.cli", "compile", spec, "-o", str(folder), "--share-attention", groups_text,
           "--max-seq-len", str(base["max_seq_len"]), "--max-batch", str(base["max_batch"]), "--dtype", base["dtype"]]
    print(f"compiling {folder} (a few minutes): {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"compile failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    print(f"  compiled in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def measure(engine, ids: np.ndarray, new: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s) of one greedy generation."""
    ttft, decode_s, tokens = time_generate(engine, ids, new)
    return ttft, (tokens - 1) / decode_s


def kv_bytes_per_token(engine, length: int = 64) -> float:
    from steerc.runtime import prefill

    ids = random_prompt(engine.geometry.vocab_size, 1, length, seed=3)
    _, cache = prefill(engine, ids, np.ones_like(ids), engine.new_cache(1))
    return cache.nbytes / cache.length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", action="append", required=True, help="shared layer groups, e.g. 20-29 or 20-24,25-29 (repeat the option to compare several)")
    parser.add_argument("--baseline", default=DEFAULT_ENGINE, help=f"the unshared engine (its model, dtype and max length are reused; default: {DEFAULT_ENGINE})")
    parser.add_argument("--engines-dir", default=None, help="where shared engines are compiled or found (default: beside the baseline)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--out", default=str(BENCH_DIR / "shared_attention.json"))
    args = parser.parse_args()

    baseline = engine_path(args.baseline).absolute()
    engines_dir = Path(args.engines_dir).absolute() if args.engines_dir else baseline.parent
    folders = {"unshared": baseline, **{g: shared_engine(baseline, g, engines_dir) for g in args.groups}}
    engines = {name: load_engine(folder, args.threads) for name, folder in folders.items()}
    base = engines["unshared"]
    contexts = [c for c in args.contexts if c + args.new_tokens <= base.max_seq_len]
    if len(contexts) < len(args.contexts):
        print(f"skipped contexts {sorted(set(args.contexts) - set(contexts))}: over the engines' {base.max_seq_len} positions with {args.new_tokens} new tokens", flush=True)

    kv = {name: kv_bytes_per_token(engine) for name, engine in engines.items()}
    rows = []
    for context in contexts:
        ids = random_prompt(base.geometry.vocab_size, 1, context)
        for engine in engines.values():  # warm-up at this shape
            measure(engine, ids[:, : min(context, 16)], 2)
        samples = interleave({name: (lambda e=engine: measure(e, ids, args.new_tokens)) for name, engine in engines.items()}, args.repeats, warmup=False)
        for name, med in medians(samples, ("ttft_s", "decode_tok_s")).items():
            row = {"context": context, "engine": name, **med}
            rows.append(row)
            print(f"ctx {context:>5}  {name:<14} ttft {row['ttft_s']:7.3f} s  decode {row['decode_tok_s']:7.1f} tok/s  KV {kv[name] / 1024:7.1f} KiB/token", flush=True)

    get = {(r["engine"], r["context"]): r for r in rows}
    ratios = []
    for name in args.groups:
        entry = {"groups": name, "shared_layers": list(engines[name].keyless_layers), "kv_bytes_per_token": kv[name],
                 "kv_bytes_ratio": kv[name] / kv["unshared"], "per_context": []}
        for context in contexts:
            shared, plain = get[(name, context)], get[("unshared", context)]
            entry["per_context"].append({"context": context, "decode_speedup": shared["decode_tok_s"] / plain["decode_tok_s"],
                                         "ttft_speedup": plain["ttft_s"] / shared["ttft_s"]})
        ratios.append(entry)
    write_json(args.out, {
        "engines": {name: str(folder) for name, folder in folders.items()},
        "model": base.manifest["source"].get("spec"), "num_layers": base.geometry.num_layers,
        "contexts": contexts, "new_tokens": args.new_tokens, "repeats": args.repeats, "batch": 1, "threads": args.threads,
        "kv_bytes_per_token": kv, "rows": rows, "ratios": ratios,
        "meaning": "decode_speedup = shared decode tok/s / unshared; ttft_speedup = unshared TTFT / shared; kv_bytes_ratio = shared KV bytes per token / unshared",
    })
    print("\n| groups | KV bytes / token | " + " | ".join(f"decode x @{c} | TTFT x @{c}" for c in contexts) + " |")
    print("|---|---|" + "---|---|" * len(contexts))
    for r in ratios:
        cells = " | ".join(f"{p['decode_speedup']:.2f}x | {p['ttft_speedup']:.2f}x" for p in r["per_context"])
        print(f"| {r['groups']} | {r['kv_bytes_ratio']:.2f} | {cells} |")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
