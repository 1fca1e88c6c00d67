"""Draw the documents trade-off plot: subspan EM and time-to-first-token speedup against the
recompute fraction R, for ``none`` and ``query`` (docs/documents_tradeoff.png, linked from
docs/RESULTS.md).

Quality comes from a ``steerc eval --documents`` summary (``tools/make_documents_results.py``
writes it: variants ``METHOD`` over the full prefill and ``METHOD+docs@R`` assembled, optionally
``/RULE``); the speedup from a ``tools/bench_documents.py`` result (variants ``R=r`` or
``R=r/RULE``, medians of per-question full / assembled). ``R = 1`` is the full prefill's quality
(identical greedy answers; tests) and is drawn at the full prefill's line.

    python tools/plot_documents.py docs/results/documents-test/summary.json docs/bench/documents.json [--out docs/documents_tradeoff.png]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_EVAL = re.compile(r"^(?P<method>[^+]+)\+docs@(?P<r>[0-9.]+)(?:/(?P<rule>\w+))?$")
_BENCH = re.compile(r"^R=(?P<r>[0-9.]+)(?:/(?P<rule>\w+))?$")


def quality(summary: dict) -> tuple[dict, dict]:
    """``{(method, rule): [(R, EM, low, high)]}`` (the paired interval vs the full prefill, shifted onto its EM) and ``{method: full EM}``."""
    p, series, full = summary["primary"], {}, {}
    for name, v in summary["variants"].items():
        m = _EVAL.match(name)
        em = 100 * v["metrics"][p]["mean"]
        if not m:
            full[name] = em
            continue
        d = v["vs_reference"][p]["diff"]
        series.setdefault((m["method"], m["rule"]), []).append((float(m["r"]), em, em - 100 * (d["mean"] - d["low"]), em + 100 * (d["high"] - d["mean"])))
    for key, points in series.items():
        points.sort()
    return series, full


def speed(bench: dict) -> dict:
    """``{(method, rule): [(R, speedup)]}``; ``R=0`` (no rule) joins every rule's series."""
    out: dict = {}
    for method, rows in bench["methods"].items():
        zero = [(0.0, row["median_speedup"]) for name, row in rows.items() if name == "R=0"]
        rules = {m["rule"] for name in rows if (m := _BENCH.match(name)) and m["rule"]} or {None}
        for name, row in rows.items():
            m = _BENCH.match(name)
            if m and float(m["r"]) > 0:
                out.setdefault((method, m["rule"]), list(zero)).append((float(m["r"]), row["median_speedup"]))
        for rule in rules:
            out.setdefault((method, rule), list(zero))
    for points in out.values():
        points.sort()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary")
    ap.add_argument("bench")
    ap.add_argument("--out", default="docs/documents_tradeoff.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    summary = json.loads(Path(args.summary).read_text())
    series, full = quality(summary)
    speeds = speed(json.loads(Path(args.bench).read_text()))
    colors = {"none": "tab:blue", "query": "tab:orange"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (method, rule), points in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        r, em, low, high = zip(*points)
        c = colors.get(method)
        left.errorbar(r, em, yerr=[[e - lo for e, lo in zip(em, low)], [hi - e for e, hi in zip(em, high)]], marker="o", capsize=3, color=c,
                      label=f"{method}, assembled" + (f" ({rule})" if rule else ""))
    for method, em in full.items():
        left.axhline(em, color=colors.get(method), linestyle="--", linewidth=1, label=f"{method}, full prefill")
    n = next(iter(summary["variants"].values()))["n"]
    left.set(xlabel="recompute fraction R", ylabel="subspan EM (%)",
             title=f"quality ({summary['run'].get('split', '')} split, {n} questions; bars: paired 95% interval vs full)")
    left.legend(fontsize=8)
    for (method, rule), points in sorted(speeds.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        r, s = zip(*points)
        right.plot(r, s, marker="o", color=colors.get(method), label=method + (f" ({rule})" if rule else ""))
    right.axhline(3, color="grey", linestyle=":", linewidth=1, label="3x target")
    right.set(xlabel="recompute fraction R", ylabel="TTFT speedup vs full prefill (x)", yscale="log", title="time to first token, documents warm (median)")
    right.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set_yticks([1, 2, 3, 5, 10, 20])
    right.legend(fontsize=8)
    fig.suptitle("NQ 10 documents, gold in the middle: contexts assembled from cached documents (SmolLM2-135M)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
