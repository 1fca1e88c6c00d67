"""`steerc eval` end to end on a tiny model (3 examples), and its errors."""

import json

import pytest

from steerc.steering import SteerConfig
from cli_process import run_cli

ROWS = [
    {"id": "fr", "context": "Paris is the capital of France. Berlin is the capital of Germany.", "question": "What is the capital of France?", "answers": ["Paris"]},
    {"id": "de", "context": "Paris is the capital of France. Berlin is the capital of Germany.", "question": "What is the capital of Germany?", "answers": ["Berlin"]},
    {"id": "it", "documents": [{"title": "Spain", "text": "Madrid is in Spain."}, {"title": "Italy", "text": "Rome is the capital of Italy."}],
     "question": "What is the capital of Italy?", "answers": ["Rome"], "gold_document": 1},
]


def steerc(*args):
    return run_cli(*args, timeout=600)


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_eval_three_examples_end_to_end(tiny_text_engine, dataset, tmp_path):
    out = tmp_path / "run"
    result = steerc("eval", tiny_text_engine, "--dataset", dataset, "--out", out, "--max-new-tokens", 3, "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert "3 examples of" in result.stderr and "all" in result.stderr  # a file defaults to the whole set
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and {r["method"] for r in rows} == {"none", "query", "llmsteer", "pasta", "autopasta"}
    # Random weights: the question's calibrated attention may point nowhere (then it answers unsteered, with no evidence).
    assert all(len(r["evidence"]) <= 1 and isinstance(r.get("evidence_hit", False), bool) for r in rows if r["method"] == "query")
    # Every query row carries its evidence distribution: a share per unit (summing to 1) and the alpha applied; the others none.
    for r in rows:
        d = r.get("distribution")
        if r["method"] != "query":
            assert d is None, r
            continue
        assert set(d) == {"kind", "shares", "strength", "alpha_applied", "hedge", "backed_off"} and d["hedge"] == SteerConfig().options.hedge, d
        # Two sentences or documents each; shares sum to 1, or are all 0 when the calibrated attention points nowhere (no pick then).
        assert len(d["shares"]) == len(d["strength"]) == 2 and sum(d["shares"]) == pytest.approx(1 if r["evidence"] else sum(d["shares"]), abs=1e-3)
        assert sum(d["shares"]) == pytest.approx(1, abs=1e-3) or not any(d["shares"])
        assert (d["alpha_applied"] < 1) == (bool(r["evidence"]) and max(d["strength"]) > 0) and d["kind"] in ("sentence", "paragraph")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["primary"] == "f1" and set(summary["variants"]) == {"none", "query", "llmsteer", "pasta", "autopasta"}
    for name in ("query", "llmsteer", "pasta", "autopasta"):
        assert summary["variants"][name]["n"] == 3 and "vs_baseline" in summary["variants"][name]
    table = (out / "summary.md").read_text()
    assert table in result.stdout and "| llmsteer | 3 |" in table
    # A second run with the same options resumes: nothing left to compute, same summary.
    again = steerc("eval", tiny_text_engine, "--dataset", dataset, "--out", out, "--max-new-tokens", 3, "--threads", 1)
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text())["variants"] == summary["variants"]


def test_eval_reports_the_bad_line(tiny_text_engine, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"context": "x", "question": "q"}) + "\n")
    result = steerc("eval", tiny_text_engine, "--dataset", bad, "--out", tmp_path / "o")
    assert result.returncode == 2 and f"{bad}:2: 'answers' must be a non-empty list" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--methods", "llmsteer,magic"], "unknown method"),
    (["--alpha", "0"], "alpha must be"),
    (["--dataset", "trivia"], "unknown dataset 'trivia'"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--hedge", "bogus"], "argument --hedge: invalid choice: 'bogus'"),
    (["--alpha", "-1"], "alpha must be a number in (0, 1]"),
    (["--sharpness", "-1"], "sharpness must be a number > 0 and <= 16, got -1.0"),
    (["--min-share", "1.5"], "min_share must be in [0, 1) (0 = always steer), got 1.5"),
    (["--self-check", "2"], "self_check must be in [0, 1) (0 = off), got 2.0"),
])
def test_eval_bad_options(tiny_text_engine, dataset, tmp_path, args, message):
    base = ["--dataset", dataset] if "--dataset" not in args else []
    result = steerc("eval", tiny_text_engine, *base, *args, "--out", tmp_path / "o")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_profile_end_to_end_then_used_by_run(tiny_text_engine, dataset, tmp_path):
    out = tmp_path / "profile.json"
    result = steerc("profile", tiny_text_engine, "--dataset", dataset, "--split", "all", "--num-selector", 2, "--top-layers", 1, "-o", out, "--threads", 1)
    assert result.returncode == 0, result.stderr
    profile = json.loads(out.read_text())
    assert len(profile["selector_heads"]) == 2 and profile["steered_heads"] and profile["geometry"] == {"num_layers": 2, "num_heads": 4}
    assert profile["made_with"]["examples"] == 3 and not out.with_name("profile.json.partial.jsonl").exists()
    assert "selector heads:" in result.stdout and "layers" in result.stderr  # the progress bar's stages
    context = tmp_path / "c.txt"
    context.write_text(ROWS[0]["context"])
    run = steerc("run", tiny_text_engine, "--context", context, "--query", "What is the capital of France?", "--method", "query", "--profile", out,
                 "--store", "memory", "--max-new-tokens", 2)
    assert run.returncode == 0 and "evidence: " in run.stderr, run.stderr
    bad = steerc("profile", tiny_text_engine, "--dataset", dataset, "--split", "all", "--num-selector", 0, "-o", out)
    assert bad.returncode == 2 and "num_selector must be a whole number >= 1" in bad.stderr


def test_eval_documents_end_to_end(tiny_text_engine, dataset, tmp_path):
    out = tmp_path / "docs"
    result = steerc("eval", tiny_text_engine, "--dataset", dataset, "--out", out, "--max-new-tokens", 3, "--threads", 1, "--methods", "none",
                    "--documents", "--recompute", "0,1", "--recompute-rule", "first,question")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by = {(r["id"], r["variant"]): r for r in rows}
    assert by[("fr", "none")]["skipped"] == "the example has no documents"
    for rule in ("first", "question"):
        assert by[("it", f"none+docs@1/{rule}")]["prediction"] == by[("it", "none")]["prediction"]  # R = 1 answers as the full prefill
        assert by[("it", f"none+docs@0/{rule}")]["assembly"]["computed_documents"] == 0  # registered before answering
        assert by[("it", f"none+docs@1/{rule}")]["recompute_rule"] == by[("it", f"none+docs@1/{rule}")]["assembly"]["recompute_rule"] == rule
    assert json.loads((out / "run.json").read_text())["variants"]["none+docs@1/question"]["recompute_rule"] == "question"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"]["distinct_documents"] == 2 and summary["variants"]["none+docs@0/first"]["vs_reference"]["reference"] == "none"
    assert "Documents: 2 distinct of 2 document slots" in result.stdout


@pytest.mark.parametrize("extra, message", [
    (["--recompute", "0.5"], "--recompute applies to --documents"),
    (["--documents", "--recompute", "0.1,7"], "invalid --recompute: recompute must be a number >= 0 and <= 1, got 7.0"),
    (["--recompute-rule", "first"], "--recompute-rule applies to --documents"),
    (["--documents", "--recompute-rule", "first,middle"], "invalid --recompute-rule: recompute_rule must be one of"),
])
def test_eval_documents_bad_options(tiny_text_engine, dataset, extra, message):
    result = steerc("eval", tiny_text_engine, "--dataset", dataset, *extra)
    assert result.returncode == 2 and message in result.stderr, result.stderr
