"""Summaries of scored rows: per variant, each metric's mean with a 95% bootstrap interval,
the paired comparison against the baseline variant on the examples both answered, the help and
harm rates against it (right = subspan EM: the answer is in the reply) and, for a method that
picks evidence, the paired change on the primary metric split by whether its pick held the gold
evidence; the mean timings; as a dict (``summary.json``) and Markdown tables."""

from __future__ import annotations

import statistics

from steerc.eval.metrics import METRICS
from steerc.eval.stats import bootstrap_mean, help_and_harm, paired_comparison

__all__ = ["summarize", "summary_markdown", "PRIMARY", "RIGHT"]

PRIMARY = {"squad": "f1", "nq-multidoc": "subspan_em", "kv-retrieval": "subspan_em"}
RIGHT = "subspan_em"  # what "right" means for help and harm: the answer is in the reply


def summarize(rows: list[dict], *, primary: str = "f1", baseline: str = "none", seed: int = 0, references: dict[str, str] | None = None) -> dict:
    """``references``: variant -> the variant it approximates (``eval --documents``: an assembled
    context -> the full prefill of the same documents), compared paired as ``vs_reference``, with
    the median per-question time-to-first-token ratio (reference / variant)."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    scored = {v: {r["id"]: r for r in rows if r["variant"] == v and "skipped" not in r} for v in variants}
    out = {"primary": primary, "baseline": baseline if baseline in scored else None, "variants": {}}
    for v in variants:
        got = scored[v]
        skipped = sum(1 for r in rows if r["variant"] == v and "skipped" in r)
        entry = {"method": next(r["method"] for r in rows if r["variant"] == v), "n": len(got), "skipped": skipped}
        if got:
            entry["metrics"] = {m: bootstrap_mean([r[m] for r in got.values()], seed=seed).to_dict() for m in METRICS}
            for t in ("prepare_s", "ttft_s"):
                entry[f"median_{t}"] = statistics.median(r[t] for r in got.values())
            entry["cache_hits"] = sum(1 for r in got.values() if r["cache"] not in ("miss", "per-query"))
            entry["mean_selected_per_layer"] = statistics.fmean(r["selected_per_layer"] for r in got.values())
            hits = [r["evidence_hit"] for r in got.values() if "evidence_hit" in r]
            if hits:  # a query-aware method: how often its evidence overlapped the gold evidence, and how often it steered at all
                entry["evidence_hit_rate"] = statistics.fmean(hits)
                entry["steered_share"] = len(hits) / len(got)
            if out["baseline"] and v != baseline:
                both = [i for i in got if i in scored[baseline]]
                if both:
                    entry["vs_baseline"] = {m: paired_comparison([got[i][m] for i in both], [scored[baseline][i][m] for i in both], seed=seed).to_dict()
                                            for m in METRICS}
                    entry.update(_help_harm_and_split(got, scored[baseline], both, primary, seed))
            ref = (references or {}).get(v)
            if ref in scored and ref != v:
                entry["vs_reference"] = _against(got, scored[ref], ref, primary, seed)
        out["variants"][v] = entry
    return out


def _against(got: dict, ref: dict, name: str, primary: str, seed: int) -> dict:
    """``got`` paired against the reference variant ``name``: every metric, help and harm, the TTFT ratio."""
    both = [i for i in got if i in ref]
    if not both:
        return {"reference": name, "n": 0}
    helped, harmed = help_and_harm([got[i][RIGHT] for i in both], [ref[i][RIGHT] for i in both], seed=seed)
    ratios = [ref[i]["ttft_s"] / got[i]["ttft_s"] for i in both if got[i]["ttft_s"] > 0]
    return {"reference": name, "n": len(both), primary: paired_comparison([got[i][primary] for i in both], [ref[i][primary] for i in both], seed=seed).to_dict(),
            "same_prediction": statistics.fmean(got[i]["prediction"] == ref[i]["prediction"] for i in both), "help": helped.to_dict(), "harm": harmed.to_dict(),
            "median_ttft_speedup": statistics.median(ratios) if ratios else None}


def _help_harm_and_split(got: dict, base: dict, both: list, primary: str, seed: int) -> dict:
    """Help and harm against the baseline, and the paired change on ``primary`` split by pick."""
    helped, harmed = help_and_harm([got[i][RIGHT] for i in both], [base[i][RIGHT] for i in both], seed=seed)
    out = {"help": helped.to_dict(), "harm": harmed.to_dict()}
    split = {}
    for name, hit in (("pick_held_evidence", True), ("pick_missed_evidence", False)):
        ids = [i for i in both if got[i].get("evidence_hit") is hit]  # only questions the method steered towards a pick
        if ids:
            split[name] = paired_comparison([got[i][primary] for i in ids], [base[i][primary] for i in ids], seed=seed).to_dict()
    if split:
        out["delta_by_pick"] = split
    return out


def _interval(d: dict, sign: str = "") -> str:
    return f"{100 * d['mean']:{sign}.1f} [{100 * d['low']:{sign}.1f}, {100 * d['high']:{sign}.1f}]"


def summary_markdown(summary: dict, title: str = "") -> str:
    """A table: each metric as mean [95% CI] (x100), the change against the baseline with its
    interval and p-value on the primary metric, and the median timings."""
    p = summary["primary"]
    lines = [f"### {title}", ""] if title else []
    lines += [f"| variant | n | EM | F1 | subspan EM | Δ {p} vs {summary['baseline']} [95% CI] | p | median TTFT s | median prepare s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, e in summary["variants"].items():
        if not e["n"]:
            lines.append(f"| {name} | 0 ({e['skipped']} skipped) | | | | | | | |")
            continue
        cells = [_interval(e["metrics"][m]) for m in ("em", "f1", "subspan_em")]
        vs = e.get("vs_baseline", {}).get(p)
        delta = f"{_interval(vs['diff'], '+')}{' *' if vs['significant'] else ''}" if vs else "—"
        pv = f"{vs['p_value']:.3f}" if vs else "—"
        n = f"{e['n']}" + (f" ({e['skipped']} skipped)" if e["skipped"] else "")
        lines.append(f"| {name} | {n} | {' | '.join(cells)} | {delta} | {pv} | {e['median_ttft_s']:.2f} | {e['median_prepare_s']:.2f} |")
    lines.append("")
    lines.append("Scores x100, mean [95% bootstrap CI]; Δ is paired on the same examples (* = the interval excludes 0).")
    rated = [(name, e) for name, e in summary["variants"].items() if "help" in e]
    if rated:
        lines += ["", f"| variant | help: wrong → right [95% CI] | harm: right → wrong [95% CI] | Δ {p} when the pick held the evidence (n) | "
                      f"Δ {p} when it did not (n) |", "|---|---|---|---|---|"]
        for name, e in rated:
            by_pick = e.get("delta_by_pick", {})
            cells = [f"{_interval(by_pick[k]['diff'], '+')} ({by_pick[k]['diff']['n']})" if k in by_pick else "—"
                     for k in ("pick_held_evidence", "pick_missed_evidence")]
            lines.append(f"| {name} | {_interval(e['help'])} | {_interval(e['harm'])} | {' | '.join(cells)} |")
        lines += ["", f"Help and harm: % of the paired questions that {summary['baseline']} gets wrong and the variant right, and the reverse "
                      "(right = subspan EM: the answer is in the reply)."]
    refs = [(name, e["vs_reference"]) for name, e in summary["variants"].items() if e.get("vs_reference", {}).get("n")]
    if refs:
        lines += ["", f"| variant | vs | Δ {p} [95% CI] | same answer | help | harm | median TTFT speedup |", "|---|---|---|---|---|---|---|"]
        for name, r in refs:
            d = r[p]
            lines.append(f"| {name} | {r['reference']} | {_interval(d['diff'], '+')}{' *' if d['significant'] else ''} | {100 * r['same_prediction']:.0f}% | "
                         f"{_interval(r['help'])} | {_interval(r['harm'])} | {r['median_ttft_speedup']:.2f}x |")
        lines += ["", "Paired against the full prefill of the same documents (per question: its TTFT / the variant's)."]
    picks = [(name, e) for name, e in summary["variants"].items() if "evidence_hit_rate" in e]
    if picks:
        lines.append("Evidence picked per question: " + "; ".join(f"{name} steered {100 * e['steered_share']:.0f}% of the questions, its pick held the gold "
                                                                   f"evidence in {100 * e['evidence_hit_rate']:.0f}% of those" for name, e in picks) + ".")
    return "\n".join(lines) + "\n"
