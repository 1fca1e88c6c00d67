"""`steerc eval` end to end on a tiny model (3 examples), and its errors."""

import json
import subprocess
import sys

import pytest

ROWS = [
    {"id": "fr", "context": "Paris is the capital of France. Berlin is the capital of Germany.", "question": "What is the capital of France?", "answers": ["Paris"]},
    {"id": "de", "context": "Paris is the capital of France. Berlin is the capital of Germany.", "question": "What is the capital of Germany?", "answers": ["Berlin"]},
    {"id": "it", "documents": [{"title": "Spain", "text": "Madrid is in Spain."}, {"title": "Italy", "text": "Rome is the capital of Italy."}],
     "question": "What is the capital of Italy?", "answers": ["Rome"], "gold_document": 1},
]


def steerc(*args):
    return subprocess.run([sys.executable, "-m", "steerc.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


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
    assert len(rows) == 12 and {r["method"] for r in rows} == {"none", "llmsteer", "pasta", "autopasta"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["primary"] == "f1" and set(summary["variants"]) == {"none", "llmsteer", "pasta", "autopasta"}
    for name in ("llmsteer", "pasta", "autopasta"):
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
])
def test_eval_bad_options(tiny_text_engine, dataset, tmp_path, args, message):
    base = ["--dataset", dataset] if "--dataset" not in args else []
    result = steerc("eval", tiny_text_engine, *base, *args, "--out", tmp_path / "o")
    assert result.returncode == 2 and message in result.stderr, result.stderr
