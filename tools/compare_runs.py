"""Pair evaluation runs made on different engines (e.g. a shared-attention engine against the
unshared one): the same examples, one variant of each run, paired by example id.

Each ``--run LABEL=FOLDER[:VARIANT]`` names a ``steerc eval`` (or ``tools/sweep.py``) output
folder and the variant to take from its ``predictions.jsonl`` (default ``none``); the first run is
the baseline. Only examples every run answered are compared. Writes ``summary.json`` and
``summary.md`` in ``--out`` with the paired intervals of ``steerc eval``'s summary.

    python tools/compare_runs.py --run unshared=runs/eval/squad-test --run shared-20-29=runs/shared/squad --primary f1 --out runs/shared/squad-vs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerc.atomic import write_text_atomic
from steerc.eval import summarize, summary_markdown
from steerc.eval.runner import read_predictions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=FOLDER[:VARIANT]; the first is the baseline")
    ap.add_argument("--primary", default="f1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if len(args.run) < 2:
        ap.error("give at least two --run")
    runs = []
    for spec in args.run:
        label, _, where = spec.partition("=")
        folder, _, variant = where.partition(":")
        if not label or not folder:
            ap.error(f"--run must be LABEL=FOLDER[:VARIANT], got {spec!r}")
        rows = [r for r in read_predictions(Path(folder) / "predictions.jsonl") if r["variant"] == (variant or "none") and "skipped" not in r]
        if not rows:
            ap.error(f"{folder} has no answered rows of variant {variant or 'none'!r}")
        runs.append((label, {r["id"]: r for r in rows}))
    common = set.intersection(*(set(rows) for _, rows in runs))
    merged = [{**rows[i], "variant": label} for label, rows in runs for i in sorted(common)]
    summary = summarize(merged, primary=args.primary, baseline=runs[0][0])
    summary["run"] = {"runs": args.run, "examples": len(common)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    text = summary_markdown(summary, f"{len(common)} examples, paired against {runs[0][0]}")
    write_text_atomic(out / "summary.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
