"""`eval --documents` on the tiny text engine: documents registered once, assembled answers paired with the full prefill."""

from dataclasses import replace

from steerc.eval.data import Example
from steerc.eval.documents import register_documents
from steerc.eval.runner import method_variants, run_eval
from steerc.eval.summary import summarize, summary_markdown
from steerc.runtime import Engine
from steerc.steering.layout import PromptLayout
from steerc.stores import MemoryStore

DOCS = ["Document (Title: A) Alpha is the first letter.", "Document (Title: B) Beta comes second.", "Document (Title: C) Gamma is third."]


def _examples():
    return [Example("q1", "unused", "Which letter is first?", ("Alpha",), (), "q1", {"gold_index": 0}, tuple(DOCS)),
            Example("q2", "unused", "Which is third?", ("Gamma",), (), "q2", {"gold_index": 2}, (DOCS[2], DOCS[0], DOCS[1])),
            Example("q3", "no documents", "Why?", ("x",), (), "q3")]


def test_registered_once_then_paired_with_the_full_prefill(tiny_text_engine):
    engine, store = Engine.load(tiny_text_engine, threads=1), MemoryStore()
    examples = _examples()
    held = register_documents(engine, examples, store, PromptLayout.for_tokenizer(engine.tokenizer), "Answer.")
    assert (held["distinct_documents"], held["document_slots"], held["computed"], held["held"]) == (3, 6, 3, 3) and held["store_bytes"] > 0
    base = method_variants(["none"])[0]
    variants = [replace(base, documents=True), replace(base, name="none+docs@1", documents=True, recompute=1.0)]
    rows = run_eval(engine, examples, variants, store=store, max_new_tokens=4)
    by = {(r["id"], r["variant"]): r for r in rows}
    assert by[("q3", "none")]["skipped"] == "the example has no documents"
    assert by[("q1", "none+docs@1")]["prediction"] == by[("q1", "none")]["prediction"]
    assert by[("q2", "none+docs@1")]["assembly"]["computed_documents"] == 0  # warm: registered before
    summary = summarize(rows, primary="subspan_em", references={"none+docs@1": "none"})
    ref = summary["variants"]["none+docs@1"]["vs_reference"]
    assert ref["n"] == 2 and ref["same_prediction"] == 1.0 and ref["median_ttft_speedup"] > 0
    assert "Paired against the full prefill" in summary_markdown(summary)
