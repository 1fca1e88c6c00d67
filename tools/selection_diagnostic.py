"""Does LLMSteer's selection find the answer? For dev examples, compare how much of the gold
evidence (the answer's sentence / document) the selected tokens cover with how much of the
whole context they cover: equal rates mean the selection is blind to the answer.

    python tools/selection_diagnostic.py ENGINE --dataset squad --limit 40 --json docs/bench/selection.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from steerc.eval import load_dataset
from steerc.runtime import Engine
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.spans import spans_to_token_mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine")
    ap.add_argument("--dataset", default="squad")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    engine = Engine.load(args.engine, threads=args.threads)
    config = SteerConfig(method="llmsteer")
    steerer = Steerer(engine, config)
    layers = sorted({layer for layer, _ in config.steered_pairs(engine.geometry.num_layers, engine.geometry.num_heads)})
    seen, rows = set(), []
    for ex in load_dataset(args.dataset, split="dev", limit=args.limit):
        if ex.context in seen or not ex.evidence:
            continue
        seen.add(ex.context)
        prepared, _ = steerer.prepare(ex.context)
        _, offsets = steerer.layout.context_ids(ex.context)
        evidence = spans_to_token_mask(offsets, list(ex.evidence), len(ex.context))  # [N]
        sel = prepared.selected[layers]  # [L', N]
        imp = prepared.importance[:, layers].sum((0, 1))  # [N], passes and steered layers summed
        rows.append({"id": ex.id, "tokens": int(sel.shape[1]), "evidence_tokens": int(evidence.sum()), "selected_rate": float(sel.mean()),
                     "evidence_recall": float(sel[:, evidence].mean()), "importance_on_evidence": float(imp[evidence].sum() / imp.sum()),
                     "evidence_share": float(evidence.mean()), "importance_on_first_4": float(imp[:4].sum() / imp.sum())})
        print(f"\r{len(rows)} contexts", end="", file=sys.stderr)
    print(file=sys.stderr)
    summary = {k: statistics.fmean(r[k] for r in rows) for k in ("selected_rate", "evidence_recall", "evidence_share", "importance_on_evidence", "importance_on_first_4")}
    summary |= {"contexts": len(rows), "dataset": args.dataset, "split": "dev", "config": config.to_dict(), "layers": layers,
                "recall_above_rate": int(sum(r["evidence_recall"] > r["selected_rate"] for r in rows))}
    for k, v in summary.items():
        if isinstance(v, float):
            print(f"{k:24s} {v:.3f}")
    print(f"evidence recall > selection rate in {summary['recall_above_rate']} of {len(rows)} contexts")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
