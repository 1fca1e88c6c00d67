"""Assembled-only ``steerc eval --documents`` variants: NQ 10 documents answered over contexts
assembled from cached documents at several recompute fractions and rules, *without* the full
prefill variant (run it once with ``steerc eval --documents``; pair with
``tools/make_documents_results.py`` or ``tools/compare_runs.py``). Writes a ``steerc eval``
folder (run.json, predictions.jsonl; resumable) with variants ``METHOD+docs@R/RULE``.

    python tools/sweep_documents.py ENGINE --split dev --limit 60 --doc-pool 100 --methods none,query \\
        --variants 0.15/first,0.15/question --out runs/dev-sweep [--threads 1]
"""

from __future__ import annotations

import argparse
from dataclasses import replace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--doc-pool", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="none")
    ap.add_argument("--variants", required=True, help="comma-separated R/RULE, e.g. 0.15/first,0.3/question")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from steerc.eval import load_dataset, method_variants, run_eval
    from steerc.eval.documents import register_documents
    from steerc.runtime import Engine
    from steerc.steering.config import SteerConfig
    from steerc.steering.documents import DocumentOptions
    from steerc.steering.layout import PromptLayout
    from steerc.stores import MemoryStore

    settings = []
    for spec in args.variants.split(","):
        r, _, rule = spec.partition("/")
        o = DocumentOptions(recompute=float(r), **({"recompute_rule": rule} if rule else {}))
        settings.append((o.recompute, o.recompute_rule))
    engine = Engine.load(args.engine, threads=args.threads)
    examples = load_dataset("nq-multidoc", split=args.split, seed=args.seed, limit=args.limit, doc_pool=args.doc_pool)
    variants = [replace(v, name=f"{v.name}+docs@{r:g}/{rule}", documents=True, recompute=r, recompute_rule=rule)
                for v in method_variants(args.methods.split(","), SteerConfig(method="none")) for r, rule in settings]
    store = MemoryStore(8 << 30)
    prefix = variants[0].config.prefixes[0]
    registered = register_documents(engine, examples, store, PromptLayout.for_tokenizer(engine.tokenizer), prefix)
    print(f"registered {registered['distinct_documents']} distinct documents of {registered['document_slots']} slots")
    info = {"dataset": "nq-multidoc", "split": args.split, "seed": args.seed, "num_docs": 10, "gold_position": None, "num_keys": 25, "doc_pool": args.doc_pool}
    run_eval(engine, examples, variants, store=store, max_new_tokens=args.max_new_tokens, out=args.out, run_info=info)
    print(f"wrote {args.out}/predictions.jsonl")


if __name__ == "__main__":
    main()
