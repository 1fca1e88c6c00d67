"""run_eval on a tiny random model with a real tokenizer: every method through the Steerer,
the shared store, resuming, and skipped examples. (Scores of a random model mean nothing;
these tests check the machinery.)"""

import json

import pytest

from steerc.errors import SteercError
from steerc.eval import method_variants, run_eval, score, summarize, summary_markdown
from steerc.eval.data import Example
from steerc.runtime import Engine
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig

PASSAGE = "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy."


def examples():
    def ex(i, question, answer, context=PASSAGE):
        start = context.index(answer)
        sentence = (context.rfind(".", 0, start) + 2 if context.rfind(".", 0, start) >= 0 else 0, context.index(".", start) + 1)
        return Example(f"q{i}", context, question, (answer,), (sentence,), context)

    return [ex(0, "What is the capital of France?", "Paris"), ex(1, "What is the capital of Italy?", "Rome"),
            ex(2, "Which city is Germany's capital?", "Berlin", "Berlin is the capital of Germany. It lies on the Spree.")]


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def test_every_method_answers_and_scores(engine):
    rows = run_eval(engine, examples(), method_variants(["none", "llmsteer", "pasta", "autopasta"]), max_new_tokens=3)
    assert [(r["id"], r["variant"]) for r in rows] == [(f"q{i}", m) for i in range(3) for m in ("none", "llmsteer", "pasta", "autopasta")]
    for r in rows:
        assert {k: r[k] for k in ("em", "f1", "subspan_em")} == score(r["prediction"], r["answers"])
        assert 1 <= r["generated_tokens"] <= 3 and r["context_tokens"] > 0
    by = {(r["id"], r["variant"]): r for r in rows}
    # llmsteer runs first and stores the plain context and the importance: none then hits, and
    # the second question on the same passage hits its llmsteer entry.
    assert by["q0", "llmsteer"]["cache"] == "miss" and by["q0", "none"]["cache"] != "miss"
    assert by["q1", "llmsteer"]["cache"] != "miss" and by["q2", "llmsteer"]["cache"] == "miss"
    assert by["q0", "autopasta"]["cache"] == "per-query" and by["q0", "autopasta"]["key_sentence"] is not None
    assert 0 < by["q0", "llmsteer"]["selected_tokens"] < by["q0", "llmsteer"]["context_tokens"]


def test_shared_store_changes_no_answer(engine):
    """Answers built from another variant's stored intermediates equal standalone ones."""
    rows = run_eval(engine, examples()[:1], method_variants(["llmsteer", "none", "pasta"]), max_new_tokens=4)
    ex = examples()[0]
    for r in rows:
        config = SteerConfig(method=r["method"], highlights=ex.evidence if r["method"] == "pasta" else ())
        alone = Steerer(engine, config).answer(ex.context, ex.question, max_new_tokens=4)
        assert alone.text == r["prediction"], r["variant"]


def test_resume_after_an_interruption(engine, tmp_path):
    variants = method_variants(["none", "llmsteer"])
    full = run_eval(engine, examples(), variants, max_new_tokens=2, out=tmp_path)
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # 3 rows and a torn line
    calls = []
    again = run_eval(engine, examples(), variants, max_new_tokens=2, out=tmp_path, progress=lambda d, t, i: calls.append(i))
    assert [r["prediction"] for r in again] == [r["prediction"] for r in full]
    assert [r["id"] for r in map(json.loads, (tmp_path / "predictions.jsonl").read_text().splitlines())] == ["q0", "q0", "q1", "q1", "q2", "q2"]
    with pytest.raises(SteercError, match="different evaluation .*max_new_tokens"):
        run_eval(engine, examples(), variants, max_new_tokens=3, out=tmp_path)
    with pytest.raises(SteercError, match="different evaluation .*examples"):
        run_eval(engine, examples()[1:], variants, max_new_tokens=2, out=tmp_path)  # fewer examples: not the same run
    assert len(run_eval(engine, examples(), variants, max_new_tokens=3, out=tmp_path, fresh=True)) == 6


def test_too_long_contexts_are_skipped_and_reported(engine):
    long = Example("long", "word " * 500, "What?", ("word",), (), "long")
    rows = run_eval(engine, [long, examples()[0]], method_variants(["none", "pasta"]), max_new_tokens=2)
    skipped = {r["variant"]: r["skipped"] for r in rows if "skipped" in r}
    assert "allows at most" in skipped["none"] or "longer" in skipped["none"]
    assert skipped["pasta"]  # too long, or nothing to highlight
    summary = summarize(rows, primary="f1")
    assert summary["variants"]["none"]["n"] == 1 and summary["variants"]["none"]["skipped"] == 1
    assert "1 skipped" in summary_markdown(summary)


def test_unknown_methods_are_refused():
    with pytest.raises(SteercError, match="unknown method"):
        method_variants(["llmsteer", "magic"])


def test_a_larger_limit_extends_a_run(engine, tmp_path):
    variants = method_variants(["none"])
    first = run_eval(engine, examples()[:2], variants, max_new_tokens=2, out=tmp_path)
    seen = []
    more = run_eval(engine, examples(), variants, max_new_tokens=2, out=tmp_path, progress=lambda d, t, i: seen.append(i))
    assert [r["prediction"] for r in more[:2]] == [r["prediction"] for r in first] and len(more) == 3
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 3
