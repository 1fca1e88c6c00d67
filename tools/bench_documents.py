"""Documents benchmark: time to first token of a context assembled from cached documents vs a full prefill.

NQ 10-document questions (test split, gold in the middle, distractors from a pool of ``--doc-pool``
passages so documents repeat). Every distinct document of the ``--store-questions`` first questions
is registered first (documents warm; the store bytes reported are theirs: one KV per distinct
document, against the document slots of those questions). Then, for each of the first
``--questions``, interleaved (A B C ... per question, after one unrecorded warm-up question):

* ``full``    the method over a full prefill of the same document tokens (nothing stored);
* ``R=r/RULE`` the method over the documents assembled from the store with ``--recompute r`` of
  the tokens ``--rules`` RULE picks (``R=0``: plain concatenation, whatever the rule; the
  ``question`` rule's ranking pass counts in its time).

Time to first token is request (document texts and question) to first answer token, with
``max_new_tokens=1``; ratios are per question (full / assembled) in the same run, medians.

    python tools/bench_documents.py [ENGINE_DIR] [--methods none,query] [--recompute 0 0.15 0.3 1] [--rules first question] [--questions 10] [--store-questions 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness import BENCH_DIR, add_engine_args, load_engine, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_args(p)
    p.add_argument("--methods", default="none,query")
    p.add_argument("--recompute", type=float, nargs="+", default=[0.0, 0.15, 0.3, 1.0])
    p.add_argument("--rules", nargs="+", default=None, help="recompute rules (default: DocumentOptions' default rule)")
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--store-questions", type=int, default=100)
    p.add_argument("--doc-pool", type=int, default=100)
    p.add_argument("--out", default=str(BENCH_DIR / "documents.json"))
    args = p.parse_args()

    from steerc.eval.data import load_dataset
    from steerc.eval.documents import register_documents
    from steerc.steering.answer import Steerer
    from steerc.steering.config import SteerConfig
    from steerc.steering.documents import DEFAULT_RULE, answer_documents
    from steerc.stores import MemoryStore

    engine = load_engine(args.engine, args.threads, args.backend)
    examples = load_dataset("nq-multidoc", split="test", limit=max(args.questions + 1, args.store_questions), doc_pool=args.doc_pool)
    store = MemoryStore(8 << 30)
    start = time.perf_counter()
    steerer = Steerer(engine, SteerConfig(method="none"), store)
    registered = register_documents(engine, examples[: args.store_questions], store, steerer.layout, steerer.config.prefixes[0])
    registered["seconds"] = round(time.perf_counter() - start, 1)
    register_documents(engine, examples[: args.questions + 1], store, steerer.layout, steerer.config.prefixes[0])  # every timed one warm
    result = {"registered": registered, "methods": {}}
    for method in args.methods.split(","):
        steerer = Steerer(engine, SteerConfig(method=method), store)
        variants = {"full": (None, DEFAULT_RULE)}
        for rule in args.rules or [DEFAULT_RULE]:
            variants.update({f"R={r:g}" if r == 0 else f"R={r:g}/{rule}": (r, rule) for r in args.recompute})
        times: dict[str, list[float]] = {name: [] for name in variants}
        recomputed: dict[str, list[int]] = {name: [] for name in variants}
        for i, ex in enumerate(examples[: args.questions + 1]):
            for name, (r, rule) in variants.items():
                t0 = time.perf_counter()
                done = answer_documents(steerer, list(ex.documents), ex.question, recompute=r, rule=rule, max_new_tokens=1)
                if i:  # the first question warms up
                    times[name].append(time.perf_counter() - t0)
                    recomputed[name].append(done.report.recomputed_tokens if done.report else done.answer.context_tokens)
        full = times["full"]
        result["methods"][method] = {name: {"median_ttft_s": round(statistics.median(t), 4),
                                            "median_speedup": round(statistics.median(f / x for f, x in zip(full, t)), 2),
                                            "mean_prefilled_tokens": round(statistics.fmean(recomputed[name]), 1)} for name, t in times.items()}
    path = write_json(args.out, result)
    print(f"registered {registered['distinct_documents']} distinct documents of {registered['document_slots']} slots: "
          f"{registered['store_bytes'] / 2**20:.1f} MiB in {registered['seconds']} s")
    print("| method | variant | median TTFT s | median speedup vs full | context tokens prefilled |\n|---|---|---|---|---|")
    for method, rows in result["methods"].items():
        for name, row in rows.items():
            print(f"| {method} | {name} | {row['median_ttft_s']:.3f} | {row['median_speedup']:.2f}x | {row['mean_prefilled_tokens']:.0f} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
