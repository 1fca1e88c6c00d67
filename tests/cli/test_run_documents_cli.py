"""`steerc run --documents`: the tiny text engine end to end (reuse reported), bad input in one line."""

import pytest
from test_cli import steerc


@pytest.fixture
def documents(tmp_path):
    paths = []
    for i, text in enumerate(["Paris is the capital of France.", "The Nile flows through Egypt.", "Everest is the highest mountain."]):
        path = tmp_path / f"doc{i}.txt"
        path.write_text(text + "\n")
        paths.append(str(path))
    return paths


def test_run_documents_reuses_the_stored_documents(tiny_text_engine, documents, tmp_path):
    store = str(tmp_path / "store")
    first = steerc("run", str(tiny_text_engine), "--documents", *documents, "--query", "Where is the Nile?", "--store", store, "--method", "query",
                   "--max-new-tokens", "4", "--compare-full")
    assert first.returncode == 0, first.stderr
    assert "documents: 3" in first.stderr and "3 document(s) missing from the store" in first.stderr and "time saved" in first.stderr
    again = steerc("run", str(tiny_text_engine), "--documents", documents[2], documents[0], "--query", "Which mountain?", "--store", store,
                   "--max-new-tokens", "4", "--recompute", "0")
    assert again.returncode == 0, again.stderr
    assert "documents: 2" in again.stderr and "stored KV from: disk, disk" in again.stderr and "0 recomputed" in again.stderr
    ruled = steerc("run", str(tiny_text_engine), "--documents", *documents, "--query", "Where is the Nile?", "--store", store,
                   "--max-new-tokens", "4", "--recompute", "0.5", "--recompute-rule", "question")
    assert ruled.returncode == 0, ruled.stderr
    assert "--recompute-rule question" in ruled.stderr and " 0 recomputed" not in ruled.stderr


@pytest.mark.parametrize("extra, message", [
    (["--recompute", "2"], "recompute must be a number >= 0 and <= 1, got 2.0"),
    (["--recompute-rule", "middle"], "invalid choice: 'middle'"),
    (["--html", "x.html"], "--html shows one context file"),
])
def test_run_documents_bad_options_fail_in_one_line(tiny_text_engine, documents, extra, message):
    result = steerc("run", str(tiny_text_engine), "--documents", *documents, "--query", "q", "--store", "memory", *extra)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_run_recompute_needs_documents(tiny_engine, documents):
    result = steerc("run", str(tiny_engine), "--context", documents[0], "--query", "q", "--recompute", "0.5")
    assert result.returncode == 2 and "--recompute, --recompute-rule and --compare-full apply to --documents" in result.stderr
