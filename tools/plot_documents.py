"""Draw the documents trade-off plot: subspan EM and time-to-first-token speedup against the
recompute fraction R (docs/results/documents_tradeoff.png, linked from docs/RESULTS.md).

Quality comes from ``steerc eval --documents`` summaries (``tools/make_documents_results.py``
writes them: variants ``METHOD`` over the full prefill and ``METHOD+docs@R[/RULE]`` assembled;
``R = 0`` is plain concatenation whatever the rule, and joins every rule's line); the speedup from
a ``tools/bench_documents.py`` result (variants ``R=r[/RULE]``, medians of per-question full /
assembled). Panels: the test summary (``none`` and ``query``), the dev sweep when given
(``--dev``: every rule), and the speedup. Bars: the paired 95% interval against the full prefill,
drawn around the variant's score.

    python tools/plot_documents.py docs/results/documents-test/summary.json docs/bench/documents.json \\
        [--dev docs/results/documents-dev/summary.json] [--out docs/results/documents_tradeoff.png]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_EVAL = re.compile(r"^(?P<method>[^+]+)\+docs@(?P<r>[0-9.]+)(?:/(?P<rule>\w+))?$")
_BENCH = re.compile(r"^R=(?P<r>[0-9.]+)(?:/(?P<rule>\w+))?$")
DEFAULT_RULE = "first"  # unnamed variants (METHOD+docs@R) were run with the default rule


def _join_zero(points: dict) -> dict:
    """R = 0 points (no rule) joined to every rule's line of the same method."""
    out: dict = {}
    for (method, rule), pts in points.items():
        if rule is not None:
            out.setdefault((method, rule), []).extend(pts)
    for (method, rule), pts in points.items():
        if rule is None:
            zero, rest = [p for p in pts if p[0] == 0], [p for p in pts if p[0] != 0]
            if rest:
                out.setdefault((method, DEFAULT_RULE), []).extend(rest)
            targets = [k for k in out if k[0] == method] or [(method, DEFAULT_RULE)]
            for k in targets:
                out.setdefault(k, []).extend(zero)
    return {k: sorted(v) for k, v in out.items()}


def quality(summary: dict) -> tuple[dict, dict]:
    """``{(method, rule): [(R, EM, low, high)]}`` and ``{method: full prefill EM}``."""
    p, series, full = summary["primary"], {}, {}
    for name, v in summary["variants"].items():
        m = _EVAL.match(name)
        em = 100 * v["metrics"][p]["mean"]
        if not m:
            full[name] = em
            continue
        d = v["vs_reference"][p]["diff"]
        series.setdefault((m["method"], m["rule"]), []).append((float(m["r"]), em, em - 100 * (d["mean"] - d["low"]), em + 100 * (d["high"] - d["mean"])))
    return _join_zero(series), full


def speed(bench: dict) -> dict:
    """``{(method, rule): [(R, speedup)]}``."""
    series: dict = {}
    for method, rows in bench["methods"].items():
        for name, row in rows.items():
            if m := _BENCH.match(name):
                series.setdefault((method, m["rule"]), []).append((float(m["r"]), row["median_speedup"]))
    return _join_zero(series)


def _quality_panel(ax, summary: dict, title: str, colors: dict, styles: dict) -> None:
    series, full = quality(summary)
    for (method, rule), points in sorted(series.items()):
        r, em, low, high = zip(*points)
        ax.errorbar(r, em, yerr=[[e - lo for e, lo in zip(em, low)], [hi - e for e, hi in zip(em, high)]], marker="o", capsize=3,
                    color=colors.get(method), linestyle=styles.get(rule, "-"), label=f"{method}, assembled ({rule})")
    for method, em in full.items():
        ax.axhline(em, color=colors.get(method), linestyle=":", linewidth=1.2, label=f"{method}, full prefill")
    n = next(iter(summary["variants"].values()))["n"]
    ax.set(xlabel="recompute fraction R", ylabel="subspan EM (%)", title=f"{title}, {n} questions")
    ax.legend(fontsize=7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary")
    ap.add_argument("bench")
    ap.add_argument("--dev", default=None, help="a dev sweep's summary.json (every rule), drawn as its own panel")
    ap.add_argument("--out", default="docs/results/documents_tradeoff.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    colors = {"none": "tab:blue", "query": "tab:orange"}
    rule_colors = {"first": "tab:blue", "last": "tab:green", "suffix": "tab:purple", "question": "tab:red"}
    styles = {"first": "-", "last": "-.", "suffix": "--", "question": (0, (1, 1))}
    panels = 3 if args.dev else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.4))
    _quality_panel(axes[0], json.loads(Path(args.summary).read_text()), "test: quality at the default rule", colors, styles)
    if args.dev:
        dev = json.loads(Path(args.dev).read_text())
        series, full = quality(dev)
        ax = axes[1]
        for i, ((method, rule), points) in enumerate(sorted(series.items())):
            r, em, low, high = zip(*points)
            r = [x + 0.004 * (i - 1.5) for x in r]  # rules side by side, so their bars do not hide each other
            ax.errorbar(r, em, yerr=[[e - lo for e, lo in zip(em, low)], [hi - e for e, hi in zip(em, high)]], marker="o", capsize=3,
                        color=rule_colors.get(rule), linestyle=styles.get(rule, "-"), label=f"{method}, {rule}")
        for method, em in full.items():
            ax.axhline(em, color="grey", linestyle=":", linewidth=1.2, label=f"{method}, full prefill")
        n = next(iter(dev["variants"].values()))["n"]
        ax.set(xlabel="recompute fraction R", ylabel="subspan EM (%)", title=f"dev: quality by recompute rule, {n} questions")
        ax.legend(fontsize=7)
    right = axes[-1]
    for (method, rule), points in sorted(speed(json.loads(Path(args.bench).read_text())).items()):
        r, s = zip(*points)
        right.plot(r, s, marker="o", color=colors.get(method), linestyle=styles.get(rule, "-"), label=f"{method} ({rule})")
    right.axhline(3, color="grey", linestyle=":", linewidth=1, label="3x target")
    right.set(xlabel="recompute fraction R", ylabel="TTFT speedup vs full prefill", yscale="log", title="time to first token, documents warm (median)")
    right.set_yticks([1, 2, 3, 5, 10, 20])
    right.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
    right.yaxis.set_minor_formatter(NullFormatter())
    right.legend(fontsize=7)
    fig.suptitle("NQ 10 documents, gold in the middle, pool of 100: contexts assembled from cached documents (SmolLM2-135M)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
