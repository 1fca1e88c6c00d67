import json

import pytest

from steerc.eval.data import (DatasetError, format_documents, load_dataset, load_jsonl, load_kv_retrieval, load_nq_multidoc, split_examples,
                              data_dir)
from steerc.eval.metrics import normalize_answer

needs_data = pytest.mark.skipif(not (data_dir() / "squad-dev-v1.1.json.gz").exists(), reason="../shared/data is not beside the project")


def write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"id": "a", "context": "Paris is the capital of France. Berlin is in Germany.", "question": "Capital of France?", "answers": ["Paris"]}


def test_jsonl_context_rows_and_evidence(tmp_path):
    (ex,) = load_jsonl(write(tmp_path, [GOOD]))
    assert ex.id == "a" and ex.answers == ("Paris",) and ex.question == "Capital of France?"
    assert [ex.context[s:e] for s, e in ex.evidence] == ["Paris is the capital of France."]  # the answer's sentence


def test_jsonl_documents_rows(tmp_path):
    docs = [{"title": "T1", "text": "Nothing here."}, {"title": "T2", "text": "Paris is in France."}]
    (ex,) = load_jsonl(write(tmp_path, [{"documents": docs, "question": "Where is Paris?", "answers": ["France"], "gold_document": 1}]))
    assert ex.context == "Document [1](Title: T1) Nothing here.\nDocument [2](Title: T2) Paris is in France."
    assert [ex.context[s:e] for s, e in ex.evidence] == ["Document [2](Title: T2) Paris is in France."]
    assert ex.id == "line-1"


def test_jsonl_highlights_override_evidence(tmp_path):
    (ex,) = load_jsonl(write(tmp_path, [GOOD | {"highlights": [[0, 5]]}]))
    assert ex.evidence == ((0, 5),)


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"context": "c", "question": "q"}, "'answers' must be a non-empty list"),
    ({"context": "c", "question": "q", "answers": []}, "'answers' must be a non-empty list"),
    ({"context": "c", "question": "", "answers": ["x"]}, "'question' must be a non-empty string"),
    ({"question": "q", "answers": ["x"]}, "exactly one of 'context'"),
    ({"context": "c", "documents": [{"text": "t"}], "question": "q", "answers": ["x"]}, "exactly one of 'context'"),
    ({"documents": [{"title": "t"}], "question": "q", "answers": ["x"]}, r"documents\[0\] must be an object with a non-empty string 'text'"),
    ({"documents": [{"text": "t"}], "question": "q", "answers": ["x"], "gold_document": 3}, "'gold_document' must be an index"),
    ({"context": "short", "question": "q", "answers": ["x"], "highlights": [[2, 99]]}, "'highlights' must be"),
    (GOOD, "duplicate id 'a' \\(first on line 1\\)"),
])
def test_jsonl_rejects_malformed_rows_with_their_line(tmp_path, bad, message):
    path = write(tmp_path, [GOOD, bad])
    with pytest.raises(DatasetError, match=message) as err:
        load_jsonl(path)
    assert f"{path}:2:" in str(err.value)


def test_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no examples"):
        load_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(DatasetError, match="unknown dataset 'trivia'"):
        load_dataset("trivia")


def test_split_is_disjoint_by_group_and_fixed_by_seed(tmp_path):
    rows = [GOOD | {"id": f"{c}-{q}", "context": f"Context {c}. Paris."} for c in range(20) for q in range(3)]
    examples = load_jsonl(write(tmp_path, rows))
    dev, test = split_examples(examples, "dev", 0), split_examples(examples, "test", 0)
    assert {e.group for e in dev}.isdisjoint({e.group for e in test})
    assert len(dev) + len(test) == 60 and len(dev) == 18  # 30% of the 20 contexts, all three questions each
    assert [e.id for e in dev] == [e.id for e in split_examples(examples, "dev", 0)]
    assert [e.id for e in dev] != [e.id for e in split_examples(examples, "dev", 1)]
    assert len(split_examples(examples, "all", 0)) == 60


def test_format_documents_spans():
    text, spans = format_documents([{"title": "A", "text": "x"}, {"text": "y"}])
    assert [text[s:e] for s, e in spans] == ["Document [1](Title: A) x", "Document [2](Title: ) y"]


@needs_data
@pytest.mark.parametrize("position, index", [("first", 0), ("middle", 4), ("last", 9)])
def test_nq_multidoc_gold_position_and_clean_distractors(position, index):
    examples = load_nq_multidoc(num_docs=10, gold_position=position, seed=0)[:20]
    for ex in examples:
        docs = ex.context.split("\nDocument [")
        assert len(docs) == 10 and ex.meta["gold_index"] == index
        (s, e), = ex.evidence
        assert ex.context[s:e].startswith(f"Document [{index + 1}]")
        for i, doc in enumerate(docs):
            if i != index:
                text = " " + normalize_answer(doc.split(") ", 1)[1]) + " "
                assert not any(f" {normalize_answer(a)} " in text for a in ex.answers)


@needs_data
def test_kv_retrieval_has_the_gold_record():
    for ex in load_kv_retrieval(num_keys=10, seed=0)[:20]:
        (s, e), = ex.evidence
        record = ex.context[s:e]
        assert ex.answers[0] in record and record.split('"')[1] in ex.question
        assert ex.context.count('": "') == 10


@needs_data
def test_shipped_splits_sizes():
    dev, test = load_dataset("squad", split="dev"), load_dataset("squad", split="test")
    assert {e.id for e in dev}.isdisjoint({e.id for e in test}) and len(dev) + len(test) == 10565  # the README's count
    assert len(load_dataset("kv-retrieval", split="dev", limit=7)) == 7


@needs_data
def test_nq_distractors_from_a_pool_repeat_across_questions():
    from steerc.eval.data import DatasetError, load_nq_multidoc

    pooled = load_nq_multidoc(num_docs=10, seed=0, doc_pool=30)[:40]
    assert all(len(e.documents) == 10 and e.documents[e.meta["gold_index"]] in e.context.replace(f"[{e.meta['gold_index'] + 1}]", "") for e in pooled)
    distinct = {d for e in pooled for d in e.documents}
    assert len(distinct) <= 40 + 30  # the golds and the pool: documents repeat
    assert pooled == load_nq_multidoc(num_docs=10, seed=0, doc_pool=30)[:40]  # seeded
    unpooled = load_nq_multidoc(num_docs=10, seed=0)[:40]
    assert len({d for e in unpooled for d in e.documents}) > len(distinct)
    with pytest.raises(DatasetError, match="--doc-pool must be between"):
        load_nq_multidoc(num_docs=10, doc_pool=5)
