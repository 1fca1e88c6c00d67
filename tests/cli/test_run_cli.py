"""`steerc run` as a user runs it: the default model end to end (slow), bad input (fast)."""

import html

import pytest
from test_cli import steerc

SUPER_BOWL = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. "
    "The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers "
    "24-10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area "
    "at Santa Clara, California."
)


@pytest.fixture
def context_file(tmp_path):
    path = tmp_path / "context.txt"
    path.write_text(SUPER_BOWL)
    return path


@pytest.mark.slow
def test_run_llmsteer_then_reuse_from_disk(default_engine, context_file, tmp_path):
    store, page = tmp_path / "store", tmp_path / "page.html"
    args = ("run", str(default_engine), "--context", str(context_file), "--query", "Which team won Super Bowl 50?", "--store", str(store), "--method", "llmsteer")
    first = steerc(*args, "--html", str(page))
    assert first.returncode == 0, first.stderr
    # Whether this 135M model names the winner depends on the steering settings (unsteered it
    # says "The American Football Conference (AFC) won"): quality is measured by steerc eval
    # (docs/RESULTS.md), this test checks the pipeline.
    assert first.stdout.strip()
    assert "context cache miss" in first.stderr and "context tokens selected" in first.stderr and "time to first token" in first.stderr
    page_text = page.read_text()
    assert 'class="tok sel"' in page_text and html.escape(first.stdout.strip()) in page_text  # selected tokens marked; the answer shown
    assert page_text.count('class="tok') >= 90  # every context token (about 100 here) has its span
    second = steerc(*args)
    assert second.returncode == 0, second.stderr
    assert "context cache disk hit" in second.stderr and "context preparation 0.00 s" in second.stderr
    assert second.stdout == first.stdout  # same answer from the stored steered context


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--method", "none"], ["--method", "pasta", "--highlight", "96:150"], ["--method", "autopasta"],
                                   ["--method", "llmsteer", "--steer-at", "both", "--alpha", "0.3"], ["--evidence", "2", "--alpha", "0.3"],
                                   ["--method", "qllm", "--block-size", "16", "--blocks", "1", "--local", "8"], ["--method", "none", "--keep", "0.5"],
                                   ["--method", "query", "--keep", "40"]])
def test_run_methods(default_engine, context_file, tmp_path, extra):
    result = steerc("run", str(default_engine), "--context", str(context_file), "--query", "Which team won Super Bowl 50?", "--store", "memory", *extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and f"{extra[1] if extra[0] == '--method' else 'query'}, steer_at" in result.stderr
    assert ("compacted context (--keep" in result.stderr) == ("--keep" in extra)


@pytest.mark.slow
def test_run_refuses_context_longer_than_engine(default_engine, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    result = steerc("run", str(default_engine), "--context", str(path), "--query", "What jumps?", "--store", "memory")
    assert result.returncode == 2 and "at most 2048" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--method", "pasta"], "needs highlights"),
    (["--alpha", "2"], "alpha must be a number in (0, 1]"),
    (["--highlight", "9:3", "--method", "pasta"], "bad span"),
    (["--prefix", "only one"], "--prefix must be given twice"),
    (["--layers", "a,b"], "comma-separated list of integers"),
    (["--method", "query", "--evidence", "0"], "evidence (the number of units query steering keeps) must be a whole number >= 1"),
    (["--method", "query", "--rank-by", "lexical", "--target-share", "0.5"], "target_share needs the question's attention"),
    (["--keep", "0"], "keep must be a ratio in (0, 1] of the context or a token count"),
    (["--keep", "2.5"], "keep above 1 is a token count and must be a whole number"),
    (["--method", "qllm", "--blocks", "0"], "blocks must be a whole number >= 1"),
    (["--method", "qllm", "--steer-at", "both"], "method 'qllm' picks its evidence per question"),
])
def test_run_bad_options_fail_in_one_line(tiny_engine, context_file, extra, message):
    result = steerc("run", str(tiny_engine), "--context", str(context_file), "--query", "q", *extra)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_run_missing_context_file(tiny_engine, tmp_path):
    result = steerc("run", str(tiny_engine), "--context", str(tmp_path / "nope.txt"), "--query", "q")
    assert result.returncode == 2 and "cannot read --context" in result.stderr


def test_run_needs_a_tokenizer(tiny_engine, context_file):
    result = steerc("run", str(tiny_engine), "--context", str(context_file), "--query", "q", "--store", "memory")
    assert result.returncode == 2 and "has no tokenizer" in result.stderr


def test_run_unknown_method_is_refused(tiny_engine, context_file):
    result = steerc("run", str(tiny_engine), "--context", str(context_file), "--query", "q", "--method", "magic")
    assert result.returncode == 2 and "invalid choice: 'magic'" in result.stderr and "query" in result.stderr


def test_run_refuses_a_profile_for_another_engine(tiny_engine, context_file, tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text('{"steerc_profile": 1, "geometry": {"num_layers": 30, "num_heads": 9}, "selector_heads": [[18, 7]], "steered_heads": []}')
    result = steerc("run", str(tiny_engine), "--context", str(context_file), "--query", "q", "--profile", str(profile))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "profile is for 30 layers x 9 heads, this engine has 2 x 4; run steerc profile on this engine" in result.stderr


@pytest.mark.slow
def test_run_query_shows_its_evidence(default_engine, context_file, tmp_path):
    page = tmp_path / "page.html"
    result = steerc("run", str(default_engine), "--context", str(context_file), "--query", "Where was the game played?", "--method", "query",
                    "--store", "memory", "--html", str(page))
    assert result.returncode == 0, result.stderr
    evidence = [line for line in result.stderr.splitlines() if line.startswith("evidence: sentence")]
    assert len(evidence) == 1 and "query, steer_at" in result.stderr
    # The shipped profile's selector picks the sentence about where the game was played (the third).
    assert "evidence: sentence 3" in evidence[0] and "The game was played" in evidence[0]
    page_text = page.read_text()
    assert 'class="tok sel"' in page_text and "evidence (sentence 3)" in page_text


@pytest.mark.slow
def test_run_qllm_shows_the_retrieved_blocks(default_engine, context_file):
    result = steerc("run", str(default_engine), "--context", str(context_file), "--query", "Where was the game played?", "--method", "qllm",
                    "--block-size", "16", "--blocks", "2", "--local", "8", "--store", "memory")
    assert result.returncode == 0, result.stderr
    blocks = [line for line in result.stderr.splitlines() if line.startswith("evidence: block")]
    assert len(blocks) == 2 and "retrieval score" in blocks[0] and "qllm, steer_at" in result.stderr


def test_run_keep_above_the_context_is_refused(tiny_text_engine, context_file):
    result = steerc("run", str(tiny_text_engine), "--context", str(context_file), "--query", "q", "--method", "none", "--keep", "5000", "--store", "memory")
    assert result.returncode == 2 and "more than the context's" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
