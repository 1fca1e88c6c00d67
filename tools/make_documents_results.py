"""Write docs/results/documents.md (included by tools/make_results.py in docs/RESULTS.md) from
``steerc eval --documents`` runs over the same questions (their rows joined: the full-prefill
variants are the same computation in each; e.g. one run per set of --recompute values) and a
``tools/bench_documents.py`` result; copies them into docs/.

    python tools/make_documents_results.py RUN_DIR [RUN_DIR ...] --bench BENCH_JSON [--docs docs] [--name documents-test] [--no-section]

The first run must be a ``steerc eval --documents`` run (its summary.json gives the run's settings);
the others may be ``tools/sweep_documents.py`` runs (assembled variants only, ``METHOD+docs@R/RULE``).
``--no-section`` writes only the joined folder (e.g. a dev sweep), not docs/results/documents.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _iv(d: dict, sign: str = "+") -> str:
    return f"{100 * d['mean']:{sign}.1f} [{100 * d['low']:{sign}.1f}, {100 * d['high']:{sign}.1f}]"


def section(summary: dict, bench: dict | None, run_name: str) -> list[str]:
    run, v, p = summary["run"], summary["variants"], summary["primary"]
    docs = summary.get("documents", {})
    n = next(iter(v.values()))["n"]
    lines = ["## Documents as reusable units (`--documents`)", "",
             f"NQ, {run.get('num_docs', 10)} documents, gold in the middle, {run['split']} split, {n} questions, distractors from a pool of "
             f"{run.get('doc_pool', 'all')} passages (`steerc eval --documents`, run `{run_name}`). Every variant answers over the same document "
             "tokens: `METHOD` over a full prefill, `METHOD+docs@R` assembled from the store with recompute R (`/RULE`: the recompute rule). Δ is paired (95% bootstrap "
             "interval; * = excludes 0).", "",
             "| variant | subspan EM | Δ vs the same method, full prefill | same answer | Δ vs `none`, full prefill | median TTFT s | TTFT speedup vs full |",
             "|---|---|---|---|---|---|---|"]
    for name, e in v.items():
        ref, base = e.get("vs_reference"), e.get("vs_baseline", {}).get(p)
        cells = [f"{100 * e['metrics'][p]['mean']:.1f}",
                 f"{_iv(ref[p]['diff'])}{' *' if ref[p]['significant'] else ''}" if ref else "—",
                 f"{100 * ref['same_prediction']:.0f}%" if ref else "—",
                 f"{_iv(base['diff'])}{' *' if base['significant'] else ''}" if base else "—",
                 f"{e['median_ttft_s']:.2f}", f"{ref['median_ttft_speedup']:.2f}x" if ref else "—"]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if docs:
        lines += ["", f"The store held one KV per distinct document: {docs['held']} document KVs for {docs['document_slots']} document slots "
                      f"({docs['distinct_documents']} distinct documents), {docs['store_bytes'] / 2**20:.0f} MiB at `{docs['kv_scheme']}`."]
    if bench:
        reg = bench["registered"]
        lines += ["", f"Time to first token, documents warm (`tools/bench_documents.py`: {bench.get('command', '')}; per question, full / assembled, "
                      "in the same run, medians; `max_new_tokens=1`):", "",
                  "| method | variant | median TTFT s | speedup vs full prefill | context tokens prefilled |", "|---|---|---|---|---|"]
        for method, rows in bench["methods"].items():
            for name, row in rows.items():
                lines.append(f"| {method} | {name} | {row['median_ttft_s']:.3f} | {row['median_speedup']:.2f}x | {row['mean_prefilled_tokens']:.0f} |")
        lines += ["", f"Store for {reg['document_slots'] // 10} questions over the pool: {reg['distinct_documents']} distinct documents of "
                      f"{reg['document_slots']} slots, {reg['store_bytes'] / 2**20:.0f} MiB at `{reg['kv_scheme']}` (about one KV per distinct document; "
                      f"a per-question store would hold {reg['document_slots']})."]
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--bench", default=None)
    ap.add_argument("--docs", default="docs")
    ap.add_argument("--name", default=None, help="the folder under docs/results (default documents-FIRST_RUN_NAME)")
    ap.add_argument("--no-section", action="store_true")
    args = ap.parse_args()
    from steerc.eval.runner import read_predictions
    from steerc.eval.summary import summarize, summary_markdown

    runs, docs = [Path(r) for r in args.runs], Path(args.docs)
    target = docs / "results" / (args.name or f"documents-{runs[0].name}")
    target.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    for run in runs:
        for row in read_predictions(run / "predictions.jsonl"):
            rows.setdefault((row["id"], row["variant"]), row)
    first = json.loads((runs[0] / "summary.json").read_text())
    order = sorted(rows.values(), key=lambda r: (r["variant"].split("+docs@")[0], r["variant"]))
    references = {r["variant"]: r["variant"].split("+docs@")[0] for r in order if "+docs@" in r["variant"]}
    summary = summarize(order, primary=first["primary"], references=references)
    summary["run"], summary["documents"] = first["run"], first.get("documents", {})
    (target / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in order))
    (target / "summary.json").write_text(json.dumps(summary, indent=1))
    (target / "summary.md").write_text(summary_markdown(summary, f"nq-multidoc --documents ({first['run']['split']})"))
    if args.no_section:
        print(f"wrote {target}")
        return
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    if args.bench:
        (docs / "bench").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.bench, docs / "bench" / "documents.json")
    text = section(summary, bench, target.name)
    (docs / "results" / "documents.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
