"""Generate docs/RESULTS.md and its plots from evaluation runs (nothing here is typed by hand).

Reads ``runs/sweep-hedge/*/sweep.json`` (the dev sweep of hedged query steering, which chose
today's default under a harm constraint), ``runs/sweep-query/*/sweep.json`` (the query method's
first dev sweep, which chose its alpha, layers and evidence),
``runs/sweep/*/sweep.json`` and ``runs/sweep-steer-at/*/sweep.json`` (LLMSteer's dev sweeps by tools/sweep.py), ``runs/eval/*/summary.json``
(``steerc eval`` runs; ``nq-<position>-test`` folders give the lost-in-the-middle curve) and
``docs/bench/reuse.json`` (tools/bench_reuse.py). Copies the summaries and predictions it used
to ``docs/results/`` so the page's numbers can be checked row by row.

    python tools/make_results.py            # after the runs in docs/RESULTS.md's "How to reproduce"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from steerc.steering import SteerConfig  # noqa: E402

METHOD_ORDER = ["none", "query", "query+profile", "llmsteer", "pasta", "autopasta"]
LABEL = {"none": "none", "query": "query (default)", "query+profile": "query, profiled heads", "llmsteer": "LLMSteer", "pasta": "PASTA (oracle)",
         "autopasta": "AutoPASTA"}
COLOR = {"none": "tab:gray", "query": "tab:red", "query+profile": "tab:purple", "llmsteer": "tab:orange", "pasta": "tab:green", "autopasta": "tab:blue"}
POSITIONS = ["first", "middle", "last"]


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def errorbars(intervals: list[dict]) -> list[list[float]]:
    """matplotlib's asymmetric yerr (x100) from bootstrap intervals."""
    return [[100 * (v["mean"] - v["low"]) for v in intervals], [100 * (v["high"] - v["mean"]) for v in intervals]]


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def choose_defaults(sweeps: dict[str, dict]) -> tuple[str, dict[str, float]]:
    """The deployable variant with the best mean gain over ``none`` across the dev sweeps, each
    dataset's gain relative to its ``none`` score on its primary metric."""
    from steerc.steering.methods import get_method

    gains: dict[str, list[float]] = {}
    for data in sweeps.values():
        p = data["primary"]
        base = data["variants"]["none"]["metrics"][p]["mean"]
        configs = data.get("run", {}).get("variants", {})
        for name, v in data["variants"].items():
            if name == "none" or get_method(configs.get(name, {}).get("method", "none")).oracle:
                continue  # the baseline, and oracles (they read the gold evidence): never a default
            gains.setdefault(name, []).append((v["metrics"][p]["mean"] - base) / max(base, 1e-9))
    score = {n: sum(g) / len(g) for n, g in gains.items() if len(g) == len(sweeps)}
    return max(score, key=score.get), score


def sweep_section(sweeps: dict[str, dict], out: Path, name: str = "sweep", title: str = "LLMSteer dev sweep") -> list[str]:
    if not sweeps:
        return ["No dev sweep found (run tools/sweep.py).", ""]
    best, score = choose_defaults(sweeps)
    names = list(next(iter(sweeps.values()))["variants"])
    lines = ["| variant | " + " | ".join(f"{d} {s['primary']} (n={s['variants']['none']['n']})" for d, s in sweeps.items()) + " | mean relative gain |",
             "|---|" + "---|" * (len(sweeps) + 1)]
    for n in names:
        cells = []
        for s in sweeps.values():
            v = s["variants"].get(n)
            if v is None:
                cells.append("—")
                continue
            m = v["metrics"][s["primary"]]
            vs = v.get("vs_baseline", {}).get(s["primary"])
            delta = f" ({100 * vs['diff']['mean']:+.1f}{'*' if vs['significant'] else ''})" if vs else ""
            cells.append(f"{pct(m['mean'])}{delta}")
        gain = f"{100 * score[n]:+.1f}%" if n in score else "—"
        lines.append(f"| {'**' + n + '**' if n == best else n} | " + " | ".join(cells) + f" | {gain} |")
    run = next(iter(sweeps.values()))["run"]
    chosen, depth, width = run["variants"][best], run["num_layers"], run["num_heads"]
    picked = SteerConfig.from_dict(chosen)
    default = SteerConfig(method=picked.method)
    # This sweep chose the query method's alpha, evidence and layers; its ranking and hedging are the hedging sweep's.
    fields = ("alpha", "top_k", "steer_at") if picked.method == "llmsteer" else ("alpha", "evidence", "unit", "target_share", "min_share")
    chosen_fields, default_fields = picked.to_dict(), default.to_dict()  # flat: shared settings + the method's options
    same = all(chosen_fields[f] == default_fields[f] for f in fields) and picked.steered_pairs(depth, width) == default.steered_pairs(depth, width)
    is_default = picked.method == SteerConfig().method
    lines += ["", f"Chosen on dev: **{best}** ({', '.join(f'{f} {chosen_fields[f]}' for f in fields)}, steer_at {picked.steer_at}, "
              f"layers {'all' if picked.layers is None else picked.layers}). "
              + (f"These are `SteerConfig`'s defaults for `{picked.method}`" + (", the default method." if is_default else ".") if same
                 else "**Warning: `SteerConfig`'s defaults differ from this choice.**"), ""]
    # plot: relative gain per variant
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(score) + 1.5))
    order = sorted(score, key=score.get)
    ax.barh(order, [100 * score[n] for n in order], color=["tab:orange" if n == best else "tab:blue" for n in order])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("mean relative gain over none on dev (%)")
    ax.set_title(title)
    save(fig, out / f"{name}.png")
    lines += [f"![{title}](results/{name}.png)", ""]
    return lines


TODAY = "q off"  # the query variant of the first sweep (the bias before hedging): the harm every hedged variant is measured against
HARM_FACTOR = 0.5  # a default may harm at most this fraction of what TODAY harms on dev


def _rate(v: dict, key: str) -> float:
    return v[key]["mean"] if key in v else float("nan")


def choose_hedged(sweeps: dict[str, dict]) -> tuple[str | None, dict[str, float], dict[str, float]]:
    """The default under the harm constraint: among the deployable variants whose harm rate (the
    mean over the dev sets) is at most ``HARM_FACTOR`` of :data:`TODAY`'s, the best mean
    relative gain (:func:`choose_defaults`' rule). Returns (the choice or None, gains, harms)."""
    _, gains = choose_defaults(sweeps)
    harms = {n: sum(_rate(s["variants"][n], "harm") for s in sweeps.values()) / len(sweeps) for n in gains}
    cap = HARM_FACTOR * harms[TODAY]
    eligible = [n for n in gains if harms[n] <= cap + 1e-12]
    return (max(eligible, key=gains.get) if eligible else None), gains, harms


def _default_note(sweeps: dict[str, dict], best: str | None) -> str:
    """Whether ``SteerConfig``'s defaults are the chosen variant's ranking, hedging and strength."""
    if best is None:
        return ""
    chosen = SteerConfig.from_dict(next(iter(sweeps.values()))["run"]["variants"][best]).to_dict()
    default = SteerConfig().to_dict()
    fields = ("method", "alpha", "rank_by", "hedge", "sharpness", "self_check", "evidence", "min_share")
    differ = [f for f in fields if chosen.get(f) != default.get(f)]
    return (f" `SteerConfig`'s defaults are its {', '.join(f'{f} {default[f]}' for f in fields[1:6])}." if not differ
            else f" **Warning: `SteerConfig`'s defaults differ from this choice in {', '.join(differ)}.**")


def hedge_section(sweeps: dict[str, dict], out: Path) -> list[str]:
    """The hedged-steering dev sweep: help, harm, the paired change by pick, the mean gain, the
    choice under the harm constraint, and a harm-against-help plot of every variant."""
    if not sweeps:
        return ["No hedging sweep found (runs/sweep-hedge).", ""]
    best, gains, harms = choose_hedged(sweeps)
    names = [n for n in next(iter(sweeps.values()))["variants"] if n != "none"]
    head = " | ".join(f"{d} {s['primary']} Δ | {d} help | {d} harm | {d} Δ {s['primary']} held / missed pick (n)" for d, s in sweeps.items())
    lines = [f"| # | variant | {head} | mean harm | mean relative gain |", "|---|---|" + "---|" * (4 * len(sweeps) + 2)]
    for number, n in enumerate(names, 1):
        cells = []
        for s in sweeps.values():
            v = s["variants"][n]
            vs = v["vs_baseline"][s["primary"]]
            split = v.get("delta_by_pick", {})
            held, missed = (split.get(k) for k in ("pick_held_evidence", "pick_missed_evidence"))
            by_pick = " / ".join(f"{100 * x['diff']['mean']:+.1f} ({x['diff']['n']})" if x else "—" for x in (held, missed))
            cells += [f"{100 * vs['diff']['mean']:+.1f}{'*' if vs['significant'] else ''}", pct(_rate(v, "help")), pct(_rate(v, "harm")), by_pick]
        name = f"**{n}**" if n == best else n
        lines.append(f"| {number} | {name} | " + " | ".join(cells) + f" | {pct(harms[n])} | {100 * gains[n]:+.1f}% |")
    n_each = ", ".join(f"{d} n = {s['variants']['none']['n']}" for d, s in sweeps.items())
    lines += ["", f"Dev split ({n_each}); Δ is the paired change against `none` on each set's primary metric (`*`: interval excluding 0); "
              "help and harm in % of the questions (right = subspan EM); the F1 change split by whether the pick held the gold evidence. "
              f"The rule: among the variants whose mean harm is at most {HARM_FACTOR:.0%} of `{TODAY}`'s ({pct(harms[TODAY])}%), the best mean "
              f"relative gain. Chosen: **{best or 'none of them (no variant met the harm constraint)'}**." + _default_note(sweeps, best), ""]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4.5), squeeze=False)
    for ax, (d, s) in zip(axes[0], sweeps.items()):
        placed: dict[tuple[float, float], int] = {}
        for number, n in enumerate(names, 1):
            v = s["variants"][n]
            x, y = 100 * _rate(v, "help"), 100 * _rate(v, "harm")
            ax.scatter([x], [y], color="tab:orange" if n == best else "tab:red" if n == TODAY else "tab:blue", zorder=4 if n in (best, TODAY) else 3)
            stacked = placed.get((x, y), 0)  # variants on the same point: their numbers stacked above it
            placed[(x, y)] = stacked + 1
            ax.annotate(str(number), (x, y), fontsize=7, xytext=(3, 3 + 8 * stacked), textcoords="offset points")
        top = max(1.0, *(100 * max(_rate(s["variants"][n], "help"), _rate(s["variants"][n], "harm")) for n in names)) * 1.1
        ax.plot([0, top], [0, top], color="k", lw=0.6, ls=":")
        ax.set_xlim(0, top), ax.set_ylim(0, top)
        ax.set_xlabel("help: wrong → right (% of questions)")
        ax.set_ylabel("harm: right → wrong (%)")
        ax.set_title(f"{d} dev (n={s['variants']['none']['n']})")
    fig.suptitle(f"harm against help per variant (numbers: the table's #; red: {TODAY}, orange: the chosen default)", fontsize=10)
    save(fig, out / "harm_vs_help.png")
    return lines + ["![harm against help, every variant of the hedging dev sweep](results/harm_vs_help.png)", ""]


def hedged_test_section(runs: dict[str, dict]) -> list[str]:
    """The hedged default against the unhedged one it replaced and ``none`` on test (one run each,
    after the dev choice): the paired change on each set's primary metric and on F1, help, harm,
    and the F1 change split by whether the pick held the gold evidence."""
    if not runs:
        return ["No test run of the hedged default found (runs/test-hedge).", ""]
    order = ["squad", "nq-middle"]  # the default model first, then any other model's runs
    runs = dict(sorted(runs.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    lines = ["| test set (n) | variant | Δ primary [95% CI] | relative | Δ F1 [95% CI] | help | harm | Δ F1 held pick (n) | Δ F1 missed pick (n) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d, s in runs.items():
        p, base = s["primary"], s["variants"]["none"]["metrics"]
        for n, v in s["variants"].items():
            if n == "none":
                continue
            vs = v["vs_baseline"]
            ci = lambda x: f"{100 * x['mean']:+.1f} [{100 * x['low']:+.1f}, {100 * x['high']:+.1f}]"  # noqa: E731
            rel = f"{100 * vs[p]['diff']['mean'] / max(base[p]['mean'], 1e-9):+.0f}%"
            split = v.get("delta_by_pick", {})
            held, missed = (f"{100 * split[k]['diff']['mean']:+.1f} ({split[k]['diff']['n']})" if k in split else "—"
                            for k in ("pick_held_evidence", "pick_missed_evidence"))
            lines.append(f"| {d} ({v['n']}) | {n} | {p} {ci(vs[p]['diff'])} | {rel} | {ci(vs['f1']['diff'])} | {pct(_rate(v, 'help'))} "
                         f"[{pct(v['help']['low'])}, {pct(v['help']['high'])}] | {pct(_rate(v, 'harm'))} [{pct(v['harm']['low'])}, {pct(v['harm']['high'])}] "
                         f"| {held} | {missed} |")
    lines += ["", "Every row is paired against `none` on the same questions of the same run; help and harm in % (right = subspan EM). "
              "`query (hedge off, before)` is the default these runs replaced (`--hedge off --rank-by attention` with the profile's eight selector heads), "
              "rerun beside it: its rows reproduce the earlier test tables.", ""]
    return lines


def steer_at_section(sweeps: dict[str, dict]) -> list[str]:
    from steerc.eval.summary import summary_markdown

    if not sweeps:
        return ["No steer_at sweep found (runs/sweep-steer-at).", ""]
    return [summary_markdown(s, f"{name}: dev, {s['run']['examples']} examples") for name, s in sweeps.items()]


def scores_section(tests: dict[str, dict], out: Path) -> list[str]:
    from steerc.eval.summary import summary_markdown

    lines = []
    for name, s in tests.items():
        run = s.get("run", {})
        extra = f", {run.get('num_docs')} documents, gold {run.get('gold_position') or 'middle'}" if run.get("dataset") == "nq-multidoc" else (
            f", {run.get('num_keys')} keys" if run.get("dataset") == "kv-retrieval" else "")
        model = "Gemma-3-270M base, completion prompts" if "gemma" in name else "SmolLM2-135M-Instruct"
        lines.append(summary_markdown(s, f"{run.get('dataset', name)}, {model}: {run.get('split')} split, {run.get('examples')} examples{extra} (`runs/eval/{name}`)"))
    if tests:
        fig, axes = plt.subplots(1, len(tests), figsize=(4 * len(tests), 3.4), squeeze=False)
        for ax, (name, s) in zip(axes[0], tests.items()):
            p = s["primary"]
            ms = [m for m in METHOD_ORDER if m in s["variants"] and s["variants"][m]["n"]]
            vals = [s["variants"][m]["metrics"][p] for m in ms]
            ax.bar([LABEL[m] for m in ms], [100 * v["mean"] for v in vals], yerr=errorbars(vals), capsize=4, color=[COLOR[m] for m in ms])
            model = "Gemma-3-270M" if "gemma" in name else "SmolLM2-135M"
            ax.set_title(f"{name} ({p}), {model}", fontsize=8)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.set_ylabel("score x100 (95% CI)")
        save(fig, out / "scores.png")
        lines += ["![score by method](results/scores.png)", ""]
    return lines


def position_section(curve: dict[str, dict], out: Path) -> list[str]:
    if not curve:
        return ["No NQ position runs found (runs/eval/nq-first-test, nq-middle-test, nq-last-test).", ""]
    positions = [p for p in POSITIONS if p in curve]
    methods = [m for m in METHOD_ORDER if all(m in curve[p]["variants"] for p in positions)]
    lines = ["| gold position | " + " | ".join(LABEL[m] for m in methods) + " |", "|---|" + "---|" * len(methods)]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for m in methods:
        vals = [curve[p]["variants"][m]["metrics"]["subspan_em"] for p in positions]
        ax.errorbar(range(len(positions)), [100 * v["mean"] for v in vals], yerr=errorbars(vals), marker="o", capsize=3, label=LABEL[m])
    for p in positions:
        cells = []
        for m in methods:
            v = curve[p]["variants"][m]
            vs = v.get("vs_baseline", {}).get("subspan_em")
            cells.append(f"{pct(v['metrics']['subspan_em']['mean'])} [{pct(v['metrics']['subspan_em']['low'])}, {pct(v['metrics']['subspan_em']['high'])}]"
                         + (f" ({100 * vs['diff']['mean']:+.1f}{'*' if vs['significant'] else ''})" if vs else ""))
        lines.append(f"| {p} (n={curve[p]['variants'][methods[0]]['n']}) | " + " | ".join(cells) + " |")
    ax.set_xticks(range(len(positions)), positions)
    ax.set_xlabel("position of the gold document among 10")
    ax.set_ylabel("best-subspan EM x100 (95% CI)")
    ax.set_title("NQ 10 documents: lost in the middle")
    ax.legend(fontsize=8)
    save(fig, out / "lost_in_the_middle.png")
    return lines + ["", "![NQ accuracy by gold position](results/lost_in_the_middle.png)", ""]


def ttft_section(reuse: dict | None, out: Path) -> list[str]:
    if not reuse:
        return ["No reuse benchmark found (docs/bench/reuse.json from tools/bench_reuse.py).", ""]
    rows = reuse["rows"]
    method = SteerConfig.from_dict(reuse["config"]).method if "config" in reuse else "llmsteer"
    series = {"reused": f"{method}, stored context (memory)", "reused_disk": f"{method}, stored context (disk)", "none_reused": "none, stored context (memory)",
              "query_reused": "query, stored context (memory)", "llmsteer_reused": "LLMSteer, stored context (memory)", "nocache": "no cache (prefill all)",
              "autopasta": "AutoPASTA (per query)"}
    series = {k: v for k, v in series.items() if all(k in r["median_s"] for r in rows) and k != f"{method}_reused"}  # the default is "reused"
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for key, label in series.items():
        ax.plot([r["context_tokens"] for r in rows], [r["median_s"][key] for r in rows], marker="o", label=label)
    ax.set_xlabel("context tokens")
    ax.set_ylabel("median time to first token (s)")
    ax.set_yscale("log")
    ax.set_title("Time to first token by method (CPU, 2 cores)")
    ax.legend(fontsize=8)
    save(fig, out / "ttft.png")
    ratios = {"speedup_reused_vs_nocache": "no cache / stored", "query_vs_none_reused": "query / none (both stored)", "query_vs_autopasta": "query / AutoPASTA"}
    ratios = {k: v for k, v in ratios.items() if all(k in r for r in rows)}
    lines = ["| context tokens | " + " | ".join([*series.values(), *ratios.values()]) + " |", "|---|" + "---|" * (len(series) + len(ratios))]
    for r in rows:
        lines.append(f"| {r['context_tokens']} | " + " | ".join(f"{r['median_s'][k]:.3f} s" for k in series) + " | "
                     + " | ".join(f"{r[k]:.3g}x" for k in ratios) + " |")
    return lines + ["", "![TTFT by method](results/ttft.png)", ""]


def tradeoff_section(tests: dict[str, dict], out: Path) -> list[str]:
    """Score against median time to first token, per method, on each test run."""
    if not tests:
        return []
    fig, axes = plt.subplots(1, len(tests), figsize=(4 * len(tests), 3.4), squeeze=False)
    lines = ["| run | " + " | ".join(LABEL[m] for m in METHOD_ORDER) + " |", "|---|" + "---|" * len(METHOD_ORDER)]
    for ax, (name, s) in zip(axes[0], tests.items()):
        p = s["primary"]
        cells = []
        for m in METHOD_ORDER:
            v = s["variants"].get(m)
            if not v or not v["n"]:
                cells.append("—")
                continue
            score, ttft = 100 * v["metrics"][p]["mean"], v["median_ttft_s"]
            ax.scatter([ttft], [score], color=COLOR[m], label=LABEL[m], s=40)
            cells.append(f"{score:.1f} @ {ttft:.2f} s")
        lines.append(f"| {name} ({p}) | " + " | ".join(cells) + " |")
        ax.set_xscale("log")
        ax.set_xlabel("median time to first token (s, log)")
        ax.set_ylabel(f"{p} x100")
        ax.set_title(name, fontsize=9)
    axes[0][0].legend(fontsize=7)
    save(fig, out / "tradeoff.png")
    return lines + ["", "Median TTFT as measured in each run: SQuAD's passages recur (about five questions each), so most questions reuse a stored "
                    "context; every NQ and key-value context is new, so its TTFT includes the context's preparation. Reused-context TTFT: the next section.",
                    "", "![score against time to first token](results/tradeoff.png)", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--docs", default="docs")
    ap.add_argument("--intro", default="docs/results_intro.md", help="hand-written discussion placed under the title")
    args = ap.parse_args()
    runs, docs = Path(args.runs), Path(args.docs)
    out = docs / "results"
    out.mkdir(parents=True, exist_ok=True)
    sweeps = {p.parent.name: json.loads(p.read_text()) for p in sorted((runs / "sweep").glob("*/sweep.json"))}
    query_sweeps = {p.parent.name: json.loads(p.read_text()) for p in sorted((runs / "sweep-query").glob("*/sweep.json"))}
    hedge_sweeps = {p.parent.name: json.loads(p.read_text()) for p in sorted((runs / "sweep-hedge").glob("*/sweep.json"))}
    hedge_tests = {p.parent.name: json.loads(p.read_text()) for p in sorted((runs / "test-hedge").glob("*/sweep.json"))}
    steer_at = {p.parent.name: json.loads(p.read_text()) for p in sorted((runs / "sweep-steer-at").glob("*/sweep.json"))}
    evals = {p.parent.name: json.loads(p.read_text()) for p in sorted((runs / "eval").glob("*/summary.json"))}
    tests = {n: s for n, s in evals.items() if s.get("run", {}).get("split") == "test" and not n.startswith("nq-") or n == "nq-multidoc-test"}
    first = ["squad-test", "nq-multidoc-test", "kv-retrieval-test"]  # the default model's three, then any other model's runs
    tests = dict(sorted(tests.items(), key=lambda kv: (first.index(kv[0]) if kv[0] in first else len(first), kv[0])))
    curve = {p: evals[f"nq-{p}-test"] for p in POSITIONS if f"nq-{p}-test" in evals}
    if "middle" not in curve and "nq-multidoc-test" in evals:
        curve["middle"] = evals["nq-multidoc-test"]
    sources = [*((f"sweep-hedge-{n}", runs / "sweep-hedge" / n) for n in hedge_sweeps), *((f"test-hedge-{n}", runs / "test-hedge" / n) for n in hedge_tests), *((f"sweep-{n}", runs / "sweep" / n) for n in sweeps), *((f"sweep-query-{n}", runs / "sweep-query" / n) for n in query_sweeps), *((f"sweep-steer-at-{n}", runs / "sweep-steer-at" / n) for n in steer_at),
               *((n, runs / "eval" / n) for n in evals)]
    for name, folder in sources:
        target = out / name
        target.mkdir(exist_ok=True)
        for f in ("sweep.json", "summary.json", "summary.md", "run.json", "predictions.jsonl"):
            if (folder / f).exists():
                shutil.copyfile(folder / f, target / f)
    intro = Path(args.intro).read_text() if Path(args.intro).exists() else ""
    text = ["# steerc results", "", "<!-- generated by tools/make_results.py; edit docs/results_intro.md or the runs, not this file -->", "", intro,
            "## Hedged query steering on test (the default, run once after the dev choice)", "", *hedged_test_section(hedge_tests),
            "## Dev sweep of hedged query steering (choosing today's default, with a harm constraint)", "", *hedge_section(hedge_sweeps, out),
            "## Dev sweep of query-aware steering (its alpha, layers and evidence)", "", *sweep_section(query_sweeps, out, "sweep_query", "query-aware steering, dev sweep"),
            "## Dev sweep of LLMSteer (its defaults)", "", *sweep_section(sweeps, out),
            "### Where to steer (`steer_at`), with the chosen alpha, top-k and layers", "", *steer_at_section(steer_at),
            "## Test split: score by method", "", *scores_section(tests, out),
            "## Score against time to first token", "", *tradeoff_section(tests, out),
            "## NQ accuracy against gold position", "", *position_section(curve, out),
            "## Time to first token by method", "", *ttft_section(load(docs / "bench" / "reuse.json"), out)]
    rewrites = out / "attention_rewrites.md"  # tools/make_attention_results.py: qllm, --keep, shared attention
    if rewrites.exists():
        text += ["", rewrites.read_text()]
    documents = out / "documents.md"  # tools/make_documents_results.py: contexts assembled from cached documents
    if documents.exists():
        text += ["", documents.read_text()]
    (docs / "RESULTS.md").write_text("\n".join(text))
    print(f"wrote {docs / 'RESULTS.md'} and {out}/*.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
