"""The attention rewrites' page section: Q-LLM block retrieval, compacted stored contexts and shared
attention, with one speed/quality trade-off plot each, from the runs copied under ``docs/results``.

Reads (each optional; a missing one is said so on the page):

* ``docs/results/qllm-dev-nq/sweep.json``: the dev sweep that chose qllm's defaults;
* ``docs/results/qllm-*-test/`` and ``docs/results/gemma3-270m-qllm-*-test/``: test runs, ``qllm`` vs ``none``;
* ``docs/results/keep-*-test/``: compacted contexts (``keep 0.5``, ``keep 0.25``) vs ``none``;
* ``docs/results/shared-DATASET@GROUPS/summary.json``: a shared-attention engine (variant ``shared``)
  paired against the unshared one (``tools/compare_runs.py``);
* ``docs/bench/sparse_kv.json`` (``tools/bench_sparse_kv.py``) and ``docs/bench/shared_attention.json``
  (``tools/bench_shared_attention.py``): speed ratios measured in one run.

Writes ``docs/results/attention_rewrites.md`` (included by ``tools/make_results.py``) and
``docs/results/tradeoff_{qllm,keep,shared}.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS, BENCH = ROOT / "docs" / "results", ROOT / "docs" / "bench"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _summary(folder: Path) -> dict | None:
    return _load(folder / "summary.json") or _load(folder / "sweep.json")


def _delta(entry: dict, metric: str) -> tuple[float, float, float] | None:
    d = (entry.get("vs_baseline") or {}).get(metric)
    return None if d is None else (100 * d["diff"]["mean"], 100 * d["diff"]["low"], 100 * d["diff"]["high"])


def _fmt(d) -> str:
    if d is None:
        return "—"
    star = " *" if d[1] > 0 or d[2] < 0 else ""
    return f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]{star}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str) -> str:
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    return f"![{name}](results/{name})"


def qllm_section() -> list[str]:
    lines = ["### Q-LLM block retrieval (`--method qllm`)", ""]
    runs = sorted(p for p in RESULTS.glob("*qllm-*-test") if p.is_dir())
    if runs:
        lines += ["Test split, paired against `none` on the same examples and engine (scores x100, 95% bootstrap interval; * = excludes 0). "
                  "Keys attended: the mean share of context tokens the answer attends to.", "",
                  "| run | n | metric | none | qllm | Δ [95% CI] | keys attended | evidence hit |", "|---|---|---|---|---|---|---|---|"]
        for run in runs:
            s = _summary(run)
            if not s:
                continue
            metric, variants = s["primary"], s["variants"]
            none = variants.get("none")
            for name, v in variants.items():
                if name == "none" or none is None or "metrics" not in v:
                    continue
                share = v["mean_selected_per_layer"] / max(none["mean_selected_per_layer"], 1)
                hit = v.get("evidence_hit_rate")
                cfg = s.get("run", {}).get("variants", {}).get(name, {})
                how = f"{cfg.get('retrieve_for', '?')}, {cfg.get('block_mask', '?')}" if cfg else name
                lines.append(f"| {run.name} (retrieve for {how}) | {v['n']} | {metric} | {100 * none['metrics'][metric]['mean']:.1f} | {100 * v['metrics'][metric]['mean']:.1f} | "
                             f"{_fmt(_delta(v, metric))} | {share:.0%} | {'—' if hit is None else f'{hit:.0%}'} |")
        lines.append("")
    else:
        lines += ["No qllm test runs found (docs/results/*qllm-*-test).", ""]
    sweep = _summary(RESULTS / "qllm-dev-nq")
    if sweep:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        none = sweep["variants"]["none"]
        for name, v in sweep["variants"].items():
            if name == "none":
                continue
            d = _delta(v, sweep["primary"])
            share = v["mean_selected_per_layer"] / none["mean_selected_per_layer"]
            ax.errorbar(share, d[0], yerr=[[d[0] - d[1]], [d[2] - d[0]]], fmt="o", capsize=3)
            ax.annotate(name, (share, d[0]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("share of context keys the answer attends to (fewer keys: faster decode, see the speed table)")
        ax.set_ylabel(f"Δ {sweep['primary']} vs none (points x100)")
        ax.set_title(f"qllm settings on NQ dev (gold in the middle), n={none['n']}")
        lines += ["Dev sweep behind the defaults (NQ, gold document in the middle; interrupted after "
                  f"{none['n']} questions to free the CPU): each point a setting, its paired gain over `none` against the share of context keys "
                  "attended, which sets the decode speed-up (speed table below).", "", _save(fig, "tradeoff_qllm.png"), ""]
    return lines


def keep_section(bench: dict | None) -> list[str]:
    lines = ["### Compacted stored contexts (`--keep`)", ""]
    runs = {p.name: _summary(p) for p in sorted(RESULTS.glob("keep-*-test")) if _summary(p)}
    if not runs:
        return lines + ["No compaction test runs found (docs/results/keep-*-test).", ""]
    lines += ["| run | n | metric | none | keep 0.5 | Δ | keep 0.25 | Δ |", "|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        m, v = s["primary"], s["variants"]
        cells = []
        for k in ("keep 0.5", "keep 0.25"):
            e = v.get(k)
            cells += ["—", "—"] if e is None else [f"{100 * e['metrics'][m]['mean']:.1f}", _fmt(_delta(e, m))]
        lines.append(f"| {name} | {v['none']['n']} | {m} | {100 * v['none']['metrics'][m]['mean']:.1f} | {' | '.join(cells)} |")
    lines.append("")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, s in runs.items():
        m = s["primary"]
        xs, ys, lo, hi = [1.0], [0.0], [0.0], [0.0]
        for k in ("keep 0.5", "keep 0.25"):
            e = s["variants"].get(k)
            if e is None:
                continue
            d = _delta(e, m)
            xs.append(float(k.split()[1]))
            ys.append(d[0])
            lo.append(d[0] - d[1])
            hi.append(d[2] - d[0])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"{name} ({m})")
    if bench:  # the speed side of the trade-off, measured in one run (tools/bench_sparse_kv.py)
        notes = [f"keep {k.split()[1]} @ {row['context_tokens']} tokens: decode {row['decode_vs_none'][k]:.2f}x, entry {row['bytes_vs_none'][k]:.2f}x bytes"
                 for row in bench["rows"] for k in ("keep 0.5", "keep 0.25") if k in row["decode_vs_none"]]
        ax.text(0.98, 0.04, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=7, bbox={"fc": "white", "alpha": 0.8})
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("keep (share of the context's KV stored)")
    ax.set_ylabel("Δ score vs the full context (points x100)")
    ax.invert_xaxis()
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Compacted stored contexts: quality against what is kept")
    return lines + [_save(fig, "tradeoff_keep.png"), ""]


def sparse_speed_table(bench: dict | None) -> list[str]:
    if not bench:
        return ["No speed run found (docs/bench/sparse_kv.json; tools/bench_sparse_kv.py).", ""]
    lines = [f"Speed, `tools/bench_sparse_kv.py` ({bench['repeats']} interleaved repeats, medians, ratios against `none` in the same run, "
             f"{bench.get('threads') or 'default'} ONNX Runtime threads):", "",
             "| context | variant | keys attended | TTFT on reuse | x none | decode tok/s | x none | entry MB | x none | Redis fetch+verify | x none |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench["rows"]:
        for n, m in r["median"].items():
            fetch = f"{m['fetch'] * 1e3:.0f} ms | {r['fetch_vs_none'][n]:.2f}" if m.get("fetch") is not None else "— | —"
            lines.append(f"| {r['context_tokens']} | {n} | {r['key_share'][n]:.0%} | {m['ttft']:.3f} s | {r['ttft_vs_none'][n]:.2f} | {m['decode']:.1f} | "
                         f"{r['decode_vs_none'][n]:.2f} | {r['entry_bytes'][n] / 1e6:.1f} | {r['bytes_vs_none'][n]:.2f} | {fetch} |")
    return lines + [""]


def shared_section(bench: dict | None) -> list[str]:
    """Quality from ``docs/results/shared-{dataset}-{groups}/summary.json`` (tools/compare_runs.py, the
    shared engine labelled ``shared``, the unshared one the baseline) and speed from the bench."""
    lines = ["### Shared attention (`steerc compile --share-attention`)", "",
             "Layer-pair similarity of the attention maps on SQuAD passages (`tools/attention_similarity.py`), where the groups come from:", "",
             "![layer-pair attention similarity](results/attention_similarity.png)", ""]
    ratios = {r["groups"]: r for r in (bench or {}).get("ratios", [])}
    quality: dict[str, dict[str, tuple]] = {}
    for path in sorted(RESULTS.glob("shared-*")):
        s = _summary(path)
        if not s or not path.is_dir():
            continue
        dataset, _, groups = path.name[len("shared-"):].partition("@")
        e = s["variants"].get("shared")
        if e is not None:
            quality.setdefault(groups, {})[dataset] = (_delta(e, s["primary"]), e["n"], s["primary"])
    if not ratios and not quality:
        return lines + ["No shared-attention measurements found.", ""]
    contexts = sorted({c["context"] for r in ratios.values() for c in r["per_context"]})
    datasets = sorted({d for q in quality.values() for d in q})
    head = ["groups", "shared layers", "KV bytes"] + [f"decode @{c}" for c in contexts] + [f"TTFT @{c}" for c in contexts] + [f"Δ {d}" for d in datasets]
    lines += ["Speed as ratios against the unshared engine in the same run (`tools/bench_shared_attention.py`, "
              f"{(bench or {}).get('repeats', '?')} interleaved repeats); quality paired against the unshared engine on the same test questions "
              "(`tools/compare_runs.py`; * = the interval excludes 0):", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for groups in sorted(set(ratios) | set(quality)):
        r = ratios.get(groups, {})
        per = {c["context"]: c for c in r.get("per_context", [])}
        cells = [groups, str(len(r.get("shared_layers", []))) if r else "?", f"{r['kv_bytes_ratio']:.2f}x" if r else "—"]
        cells += [f"{per[c]['decode_speedup']:.2f}x" if c in per else "—" for c in contexts]
        cells += [f"{per[c]['ttft_speedup']:.2f}x" if c in per else "—" for c in contexts]
        for d in datasets:
            q = quality.get(groups, {}).get(d)
            cells.append("—" if q is None else f"{_fmt(q[0])} ({q[2]}, n={q[1]})")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for d in datasets:
        xs, ys, lo, hi, labels = [], [], [], [], []
        for groups, q in quality.items():
            if d not in q or groups not in ratios:
                continue
            delta = q[d][0]
            xs.append(ratios[groups]["kv_bytes_ratio"])
            ys.append(delta[0])
            lo.append(delta[0] - delta[1])
            hi.append(delta[2] - delta[0])
            speed = max(ratios[groups]["per_context"], key=lambda c: c["context"])["decode_speedup"]
            labels.append(f"{groups} ({speed:.2f}x decode)")
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=d)
        for x, y, label in zip(xs, ys, labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("KV bytes per token vs the unshared engine")
    ax.set_ylabel("Δ score vs unshared (points x100)")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    ax.set_title("Shared attention: KV saved against quality")
    return lines + [_save(fig, "tradeoff_shared.png"), ""]


def main() -> int:
    sparse = _load(BENCH / "sparse_kv.json")
    text = ["## Attention rewrites: block retrieval, compaction, sharing", "", "<!-- generated by tools/make_attention_results.py -->", ""]
    text += qllm_section() + sparse_speed_table(sparse) + keep_section(sparse) + shared_section(_load(BENCH / "shared_attention.json"))
    (RESULTS / "attention_rewrites.md").write_text("\n".join(text) + "\n")
    print(f"wrote {RESULTS / 'attention_rewrites.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
