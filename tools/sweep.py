"""Dev-split sweeps against ``none``: LLMSteer's alpha, top-k, steered layers (and steer_at), or
any list of variants (``--variants``, e.g. the query method's settings).

Every variant answers the same dev examples through ``steerc.eval.run_eval``; the store keeps
each context's plain KV and dual-prefix importance, so a variant with ``steer_at = decode``
costs only its own query prefill and decode. Writes ``predictions.jsonl`` and ``sweep.json``
(summary per variant) under ``--out``; ``tools/make_results.py`` picks the defaults from them.

    python tools/sweep.py ENGINE --dataset squad --limit 40 --out runs/sweep/squad
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from steerc.atomic import write_text_atomic
from steerc.eval import PRIMARY, Variant, load_dataset, run_eval, summarize
from steerc.eval.runner import PREDICTIONS, read_predictions
from steerc.runtime import Engine
from steerc.steering import SteerConfig


def _bands(num_layers: int, parts: int = 3) -> list[tuple[int, ...]]:
    edges = [round(i * num_layers / parts) for i in range(parts + 1)]
    return [tuple(range(a, b)) for a, b in zip(edges, edges[1:])]


def variants(num_layers: int, alphas, top_ks, steer_ats, base: SteerConfig, bands: bool = True) -> list[Variant]:
    layers = "all" if base.layers is None else base.layers if isinstance(base.layers, str) else ",".join(map(str, base.layers))
    out = [Variant("none", base.with_method("none"))]
    for a in alphas:
        for k in top_ks:
            out.append(Variant(f"a={a} k={k} L={layers}", replace(base, alpha=a, top_k=k)))
    for band in _bands(num_layers) if bands else []:
        out.append(Variant(f"a={base.alpha} k={base.options.top_k} L={band[0]}-{band[-1]}", replace(base, layers=band)))
    for s in steer_ats:
        if s != base.steer_at:
            out.append(Variant(f"a={base.alpha} k={base.options.top_k} L={layers} at={s}", replace(base, steer_at=s)))
    return out


def listed_variants(path: str) -> list[Variant]:
    """``none`` plus every ``{name: {field: value}}`` of the JSON file, over SteerConfig's defaults."""
    spec = json.loads(Path(path).read_text())
    out = [Variant("none", SteerConfig(method="none"))]
    for name, fields in spec.items():
        fields = {k: tuple(tuple(p) for p in v) if k in ("selector", "profile", "highlights") else v for k, v in fields.items()}
        out.append(Variant(name, replace(SteerConfig(), **fields)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--split", default="dev", choices=["dev", "test"], help="dev to choose settings; test once, for the chosen ones")
    ap.add_argument("--num-keys", type=int, default=25, help="kv-retrieval: key-value records per question")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alphas", default="0.01,0.1,0.3")
    ap.add_argument("--top-ks", default="0.1,0.2,0.4")
    ap.add_argument("--all-layers", action="store_true", help="base the grid on every layer (the first sweep) instead of SteerConfig's default layers")
    ap.add_argument("--no-bands", action="store_true", help="skip the first/middle/last-third layer variants")
    ap.add_argument("--steer-ats", default="", help="extra steer_at values to try at the base alpha/top-k, e.g. prefill,both")
    ap.add_argument("--variants", default=None, help="JSON file {name: {SteerConfig field: value}}: sweep these (each over SteerConfig's defaults) instead of the llmsteer grid")
    ap.add_argument("--gold-position", default=None, help="nq-multidoc / kv-retrieval: where the gold document sits")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-chat", action="store_true", help="completion-style prompts (base models)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--summarize-only", action="store_true", help="summarise the examples an interrupted sweep completed (every variant answered)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engine = Engine.load(args.engine, threads=args.threads)
    examples = load_dataset(args.dataset, split=args.split, seed=args.seed, limit=args.limit, gold_position=args.gold_position, num_keys=args.num_keys)
    grid = listed_variants(args.variants) if args.variants else variants(engine.geometry.num_layers, [float(a) for a in args.alphas.split(",")], [float(k) for k in args.top_ks.split(",")],
                    [s for s in args.steer_ats.split(",") if s], SteerConfig(method="llmsteer", layers=None) if args.all_layers else SteerConfig(method="llmsteer", layers="last-third"), not args.no_bands)
    print(f"{len(examples)} {args.split} examples x {len(grid)} variants", file=sys.stderr)

    def progress(done: int, total: int, _id: str) -> None:
        print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True)

    info = {"chat": not args.no_chat, "dataset": args.dataset, "split": args.split, "seed": args.seed, "gold_position": args.gold_position, "num_keys": args.num_keys}
    if args.summarize_only:
        rows = read_predictions(Path(args.out, PREDICTIONS))
        complete = {i for i in {r["id"] for r in rows} if sum(r["id"] == i for r in rows) == len(grid)}
        examples = [e for e in examples if e.id in complete]
        rows = [r for r in rows if r["id"] in complete]
    else:
        rows = run_eval(engine, examples, grid, max_new_tokens=args.max_new_tokens, out=args.out, run_info=info, progress=progress, chat=not args.no_chat)
    summary = summarize(rows, primary=PRIMARY.get(args.dataset, "f1"), seed=args.seed)
    summary["run"] = info | {"examples": len(examples), "num_layers": engine.geometry.num_layers, "num_heads": engine.geometry.num_heads, "variants": {v.name: v.config.to_dict() for v in grid}, "max_new_tokens": args.max_new_tokens}
    write_text_atomic(Path(args.out, "sweep.json"), json.dumps(summary, indent=1))
    print(file=sys.stderr)
    for name, e in summary["variants"].items():
        m = e["metrics"][summary["primary"]]["mean"]
        d = e.get("vs_baseline", {}).get(summary["primary"], {}).get("diff", {}).get("mean", 0.0)
        print(f"{name:32s} {summary['primary']} {100 * m:5.1f}  Δ {100 * d:+5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
