"""Help, harm and the change split by pick, against a hand-made predictions file."""

import json

from steerc.eval import summarize, summary_markdown

# id, none (subspan, f1), query (subspan, f1, evidence_hit or None when it did not steer)
HAND_MADE = [
    ("q1", (0, 0.0), (1, 0.6, True)),    # helped, pick held the evidence
    ("q2", (0, 0.2), (1, 0.8, True)),    # helped, pick held the evidence
    ("q3", (1, 0.5), (0, 0.1, False)),   # harmed, pick missed
    ("q4", (1, 0.4), (1, 0.4, True)),    # right both times
    ("q5", (0, 0.0), (0, 0.0, False)),   # wrong both times, pick missed
    ("q6", (1, 1.0), (1, 0.5, None)),    # query did not steer: in help/harm, not in the split
]


def _rows(tmp_path):
    path = tmp_path / "predictions.jsonl"
    with path.open("w") as f:
        for qid, (ns, nf), (qs, qf, hit) in HAND_MADE:
            common = {"id": qid, "em": 0.0, "prepare_s": 0.0, "ttft_s": 0.1, "cache": "miss", "selected_per_layer": 1.0}
            f.write(json.dumps({**common, "variant": "none", "method": "none", "subspan_em": float(ns), "f1": nf}) + "\n")
            row = {**common, "variant": "query", "method": "query", "subspan_em": float(qs), "f1": qf}
            if hit is not None:
                row["evidence_hit"] = hit
            f.write(json.dumps(row) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_help_harm_and_the_split_by_pick_match_a_hand_count(tmp_path):
    query = summarize(_rows(tmp_path), primary="f1", seed=0)["variants"]["query"]
    assert query["help"]["mean"] == 2 / 6 and query["harm"]["mean"] == 1 / 6 and query["help"]["n"] == 6
    held, missed = query["delta_by_pick"]["pick_held_evidence"], query["delta_by_pick"]["pick_missed_evidence"]
    assert held["diff"]["n"] == 3 and abs(held["diff"]["mean"] - (0.6 + 0.6 + 0.0) / 3) < 1e-12
    assert missed["diff"]["n"] == 2 and abs(missed["diff"]["mean"] - (-0.4 + 0.0) / 2) < 1e-12
    assert held["wins"] == 2 and missed["losses"] == 1


def test_the_markdown_shows_help_and_harm(tmp_path):
    text = summary_markdown(summarize(_rows(tmp_path), primary="f1"))
    line = next(row for row in text.splitlines() if row.startswith("| query |") and "(3)" in row)
    assert "| 33.3 [" in line and "| 16.7 [" in line and "+40.0 [" in line and "(2)" in line
    assert "help: wrong → right" in text


def test_a_baseline_alone_has_no_help_or_harm(tmp_path):
    summary = summarize([r for r in _rows(tmp_path) if r["variant"] == "none"], primary="f1")
    assert "help" not in summary["variants"]["none"] and "help:" not in summary_markdown(summary)
