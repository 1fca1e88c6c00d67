"""tools/make_results.py builds the page and plots from run summaries (synthetic rows here)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from steerc.eval import summarize

ROOT = Path(__file__).resolve().parents[2]


def rows(methods, n, rng, shift=0.0):
    out = []
    for i in range(n):
        for m, p in methods.items():
            hit = float(rng.random() < p + (shift if m != "none" else 0))
            method = m if m in ("none", "query", "llmsteer", "pasta", "autopasta") else "query" if m.startswith("q ") else "llmsteer"
            out.append({"id": f"e{i}", "variant": m, "method": method,
                        "em": hit, "f1": hit, "subspan_em": hit, "cache": "miss", "prepare_s": 0.1, "ttft_s": 0.2, "selected_per_layer": 3.0})
    return out


def write_summary(folder: Path, name: str, summary: dict):
    folder.mkdir(parents=True)
    (folder / name).write_text(json.dumps(summary))


def test_make_results_writes_tables_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    (docs / "bench").mkdir(parents=True)
    variants = {"none": {"method": "none", "alpha": 0.1, "top_k": 0.2, "steer_at": "decode", "layers": None},
                "a=0.1 k=0.2 L=20-29": {"method": "llmsteer", "alpha": 0.1, "top_k": 0.2, "steer_at": "decode", "layers": list(range(20, 30))},
                "a=0.3 k=0.2 L=all": {"method": "llmsteer", "alpha": 0.3, "top_k": 0.2, "steer_at": "decode", "layers": None}}
    for d in ("squad", "nq-multidoc"):
        s = summarize(rows({"none": 0.3, "a=0.1 k=0.2 L=20-29": 0.5, "a=0.3 k=0.2 L=all": 0.2}, 30, rng), primary="f1")
        s["run"] = {"dataset": d, "split": "dev", "examples": 30, "variants": variants, "num_layers": 30, "num_heads": 9}
        write_summary(runs / "sweep" / d, "sweep.json", s)
    qvariants = {"none": {"method": "none"}, "q a=0.1 L=all": {"method": "query", "alpha": 0.1, "layers": "all"},
                 "q a=0.5 L=all": {"method": "query", "alpha": 0.5, "layers": "all"}}
    for d in ("squad", "nq-multidoc"):
        s = summarize(rows({"none": 0.3, "q a=0.1 L=all": 0.6, "q a=0.5 L=all": 0.35}, 30, rng), primary="f1")
        s["run"] = {"dataset": d, "split": "dev", "examples": 30, "variants": qvariants, "num_layers": 30, "num_heads": 9}
        write_summary(runs / "sweep-query" / d, "sweep.json", s)
    four = {"none": 0.3, "query": 0.5, "llmsteer": 0.35, "pasta": 0.6, "autopasta": 0.3}
    for name, dataset, extra in [("squad-test", "squad", {}), ("nq-multidoc-test", "nq-multidoc", {"num_docs": 10, "gold_position": "middle"}),
                                 ("nq-first-test", "nq-multidoc", {"num_docs": 10, "gold_position": "first"}),
                                 ("nq-last-test", "nq-multidoc", {"num_docs": 10, "gold_position": "last"})]:
        s = summarize(rows(four if name in ("squad-test", "nq-multidoc-test") else {"none": 0.4, "llmsteer": 0.4}, 40, rng), primary="subspan_em")
        s["run"] = {"dataset": dataset, "split": "test", "examples": 40, **extra}
        write_summary(runs / "eval" / name, "summary.json", s)
    reuse = {"rows": [{"context_tokens": n, "median_s": {"reused": 0.1, "reused_disk": 0.2, "nocache": n / 300, "autopasta": n / 250},
                       "speedup_reused_vs_nocache": n / 30} for n in (512, 1024)]}
    (docs / "bench" / "reuse.json").write_text(json.dumps(reuse))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_results.py"), "--runs", str(runs), "--docs", str(docs), "--intro", str(tmp_path / "none.md")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = (docs / "RESULTS.md").read_text()
    assert "Chosen on dev: **a=0.1 k=0.2 L=20-29**" in page and "These are `SteerConfig`'s defaults for `llmsteer`." in page
    assert "Chosen on dev: **q a=0.1 L=all**" in page and "These are `SteerConfig`'s defaults for `query`, the default method." in page
    assert "| squad-test (subspan_em) |" in page  # score against TTFT
    assert "| llmsteer | 40 |" in page and "| middle (n=40) |" in page and "| 512 |" in page
    for png in ("sweep.png", "sweep_query.png", "scores.png", "lost_in_the_middle.png", "ttft.png", "tradeoff.png"):
        assert (docs / "results" / png).stat().st_size > 1000
    assert (docs / "results" / "squad-test" / "summary.json").exists()
