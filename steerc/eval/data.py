"""Evaluation examples: the JSONL format anyone can write, loaders for the three shipped
datasets, and the fixed dev/test split.

JSONL format (one JSON object per line)::

    {"id": "q1",                      # optional (default: the line number); unique
     "context": "...",                # either a context string ...
     "documents": [{"title": "...", "text": "..."}],   # ... or a list of documents
     "question": "...",
     "answers": ["...", "..."],       # every acceptable answer (non-empty strings)
     "gold_document": 0,              # optional, with documents: the one holding the answer
     "highlights": [[120, 180]]}      # optional, with context: evidence character ranges

Documents become the context ``Document [i](Title: T) text``, one per line (the Lost in the
Middle layout). The evidence (``highlights``, the gold document, or else every sentence that
contains a gold answer) is what the ``pasta`` method emphasises: an oracle, so PASTA results
are an upper bound of hand-marked emphasis, not a deployable method.

Splits: examples are grouped by context (SQuAD's ~5 questions per passage stay together),
the groups shuffled with ``seed``; the first ``DEV_FRACTION`` of the groups are ``dev``, the
rest ``test``. Tune on dev only.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from steerc.errors import SteercError
from steerc.eval.metrics import normalize_answer
from steerc.steering.spans import split_sentences
from steerc.user_files import UserFileError, read_jsonl

__all__ = ["Example", "DatasetError", "DATASETS", "GOLD_POSITIONS", "SPLITS", "DEV_FRACTION", "load_dataset", "load_jsonl",
           "load_squad", "load_nq_multidoc", "load_kv_retrieval", "split_examples", "format_documents", "document_line", "data_dir"]

DATASETS = ("squad", "nq-multidoc", "kv-retrieval")
GOLD_POSITIONS = ("first", "middle", "last", "random")
SPLITS = ("dev", "test", "all")
DEV_FRACTION = 0.3
FILES = {"squad": "squad-dev-v1.1.json.gz", "nq-multidoc": "nq-open-oracle.jsonl.gz", "kv-retrieval": "kv-retrieval-75_keys.jsonl.gz"}
KV_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object above."

Span = tuple[int, int]


class DatasetError(SteercError):
    """A dataset file is missing or malformed."""


@dataclass(frozen=True)
class Example:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    evidence: tuple[Span, ...]  # character ranges of the context that hold the answer (may be empty)
    group: str  # examples with the same group share their context
    meta: dict = field(default_factory=dict, compare=False)
    # The documents of a multi-document example, one line each without its position number, so a
    # document's text (and stored KV) is the same in every question it appears in (`eval --documents`).
    documents: tuple[str, ...] = ()


def data_dir() -> Path:
    """``../shared/data`` beside the project (or ``$STEERC_DATA``)."""
    import os

    env = os.environ.get("STEERC_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _open(path: Path):
    if not path.is_file():
        raise DatasetError(f"dataset file {path} not found (set STEERC_DATA to the folder holding {path.name})")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def document_line(doc: dict) -> str:
    """A document as one position-free line, ``Document (Title: T) text``: what ``eval --documents`` stores and assembles."""
    return f"Document (Title: {doc.get('title', '')}) {doc['text']}"


def format_documents(documents: list[dict]) -> tuple[str, list[Span]]:
    """``Document [i](Title: T) text`` lines and each document's character range."""
    parts, spans, at = [], [], 0
    for i, doc in enumerate(documents, 1):
        line = f"Document [{i}](Title: {doc.get('title', '')}) {doc['text']}"
        spans.append((at, at + len(line)))
        parts.append(line)
        at += len(line) + 1
    return "\n".join(parts), spans


def _answer_sentences(context: str, answers) -> tuple[Span, ...]:
    golds = [normalize_answer(a) for a in answers]
    return tuple(s for s in split_sentences(context) if any(g and g in normalize_answer(context[s[0] : s[1]]) for g in golds))


# --- JSONL ------------------------------------------------------------------------------------

def _row_error(path: Path, line: int, what: str) -> DatasetError:
    return DatasetError(f"{path}:{line}: {what} (see `steerc eval --help` for the JSONL format)")


def _parse_row(path: Path, line: int, row) -> Example:
    def fail(what: str) -> DatasetError:
        return _row_error(path, line, what)

    if not isinstance(row, dict):
        raise fail(f"expected a JSON object, got {type(row).__name__}")
    question, answers = row.get("question"), row.get("answers")
    if not isinstance(question, str) or not question.strip():
        raise fail("'question' must be a non-empty string")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise fail("'answers' must be a non-empty list of non-empty strings")
    if ("context" in row) == ("documents" in row):
        raise fail("give exactly one of 'context' (a string) or 'documents' (a list of {title, text})")
    rid = row.get("id", f"line-{line}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise fail("'id' must be a string or an integer")
    if "documents" in row:
        docs = row["documents"]
        if not isinstance(docs, list) or not docs:
            raise fail("'documents' must be a non-empty list of {title, text} objects")
        for i, d in enumerate(docs):
            if not isinstance(d, dict) or not isinstance(d.get("text"), str) or not d["text"].strip() or not isinstance(d.get("title", ""), str):
                raise fail(f"documents[{i}] must be an object with a non-empty string 'text' (and an optional string 'title')")
        context, spans = format_documents(docs)
        gold = row.get("gold_document")
        if gold is not None and (isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(docs)):
            raise fail(f"'gold_document' must be an index into the {len(docs)} documents")
        evidence = (spans[gold],) if gold is not None else _answer_sentences(context, answers)
    else:
        context = row["context"]
        if not isinstance(context, str) or not context.strip():
            raise fail("'context' must be a non-empty string")
        if "gold_document" in row:
            raise fail("'gold_document' needs 'documents'")
        evidence = _answer_sentences(context, answers)
        if "highlights" in row:
            spans = row["highlights"]
            ok = isinstance(spans, list) and spans and all(
                isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in s) and 0 <= s[0] < s[1] <= len(context)
                for s in spans)
            if not ok:
                raise fail(f"'highlights' must be a non-empty list of [start, end] character ranges within the {len(context)}-character context")
            evidence = tuple(tuple(s) for s in spans)
    meta = {"line": line} if "documents" not in row or row.get("gold_document") is None else {"line": line, "gold_index": row["gold_document"]}
    docs = tuple(document_line(d) for d in row["documents"]) if "documents" in row else ()
    return Example(str(rid), context, question.strip(), tuple(answers), evidence, context, meta, docs)


def load_jsonl(path: str | Path, encoding: str | None = None) -> list[Example]:
    """Read a JSONL dataset (:func:`steerc.user_files.read_jsonl`: UTF-8 unless ``encoding``); a
    malformed row raises :class:`DatasetError` naming its line."""
    path, examples, seen = Path(path), [], {}
    if not path.is_file() and not path.is_dir():
        raise DatasetError(f"dataset file {path} not found")
    try:
        for line, row in read_jsonl(path, "dataset", "one JSON object per line (see `steerc eval --help` for the JSONL format)",
                                    encoding=encoding, flag="--encoding"):
            example = _parse_row(path, line, row)
            if example.id in seen:
                raise _row_error(path, line, f"duplicate id {example.id!r} (first on line {seen[example.id]})")
            seen[example.id] = line
            examples.append(example)
    except UserFileError as exc:
        raise DatasetError(str(exc)) from None
    if not examples:
        raise DatasetError(f"{path} holds no examples")
    return examples


# --- shipped datasets -----------------------------------------------------------------------

def load_squad(path: Path | None = None) -> list[Example]:
    """SQuAD v1.1 dev: one example per question; evidence = the sentence at the first answer."""
    with _open(path or data_dir() / FILES["squad"]) as fh:
        data = json.load(fh)["data"]
    examples = []
    for article in data:
        for p, para in enumerate(article["paragraphs"]):
            context = para["context"]
            sentences = split_sentences(context)
            for qa in para["qas"]:
                answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                start = qa["answers"][0].get("answer_start", -1)
                evidence = tuple(s for s in sentences if s[0] <= start < s[1]) or _answer_sentences(context, answers)
                examples.append(Example(qa["id"], context, qa["question"], answers, evidence, f"{article['title']}#{p}"))
    return examples


def _gold_index(position: str, n: int, rng: random.Random) -> int:
    return {"first": 0, "middle": (n - 1) // 2, "last": n - 1}.get(position, None) if position != "random" else rng.randrange(n)


def _builder_rows(name: str, path: Path | None, gold_position: str, count: int, flag: str) -> list[dict]:
    """Validate a builder's options and read its (shipped) JSONL rows."""
    if gold_position not in GOLD_POSITIONS:
        raise DatasetError(f"gold position must be one of {GOLD_POSITIONS}, got {gold_position!r}")
    if count < 1:
        raise DatasetError(f"{flag} must be at least 1, got {count}")
    with _open(path or data_dir() / FILES[name]) as fh:
        return [json.loads(t) for t in fh if t.strip()]


def load_nq_multidoc(path: Path | None = None, *, num_docs: int = 10, gold_position: str = "middle", seed: int = 0,
                     doc_pool: int | None = None) -> list[Example]:
    """NaturalQuestions-Open with ``num_docs`` documents: the gold passage at ``gold_position``,
    distractors drawn (seeded) from other questions' gold passages that contain no answer string:
    from all of them, or with ``doc_pool`` from a fixed (seeded) pool of that many, so distractors
    repeat across questions as retrieved documents do."""
    rows = _builder_rows("nq-multidoc", path, gold_position, num_docs, "--num-docs")
    if doc_pool is not None and not num_docs <= doc_pool <= len(rows):
        raise DatasetError(f"--doc-pool must be between --num-docs ({num_docs}) and the {len(rows)} passages, got {doc_pool}")
    passages = [r["ctxs"][0] for r in rows]
    norm = [normalize_answer(p["text"]) for p in passages]
    pool = sorted(random.Random(f"pool/{seed}").sample(range(len(rows)), doc_pool)) if doc_pool is not None else None
    examples = []
    for i, row in enumerate(rows):
        rng = random.Random(f"{seed}/{i}")
        golds = [normalize_answer(a) for a in row["answers"]]
        distractors, tried = [], {i}
        order = None if pool is None else rng.sample([j for j in pool if j != i], len([j for j in pool if j != i]))  # the pool, shuffled
        while len(distractors) < num_docs - 1 and len(tried) < len(rows) and (order is None or order):
            j = rng.randrange(len(rows)) if order is None else order.pop()
            if j in tried:
                continue
            tried.add(j)
            if not any(g and f" {g} " in f" {norm[j]} " for g in golds):  # whole words: "in" is no answer of every text
                distractors.append(passages[j])
        if len(distractors) < num_docs - 1:
            raise DatasetError(f"question {i} has only {len(distractors)} passages without its answers; use fewer --num-docs")
        at = _gold_index(gold_position, num_docs, rng)
        docs = distractors[:at] + [row["ctxs"][0]] + distractors[at:]
        context, spans = format_documents(docs)
        examples.append(Example(f"nq-{i}", context, row["question"], tuple(row["answers"]), (spans[at],), f"nq-{i}", {"gold_index": at},
                                tuple(document_line(d) for d in docs)))
    return examples


def load_kv_retrieval(path: Path | None = None, *, num_keys: int = 25, gold_position: str = "random", seed: int = 0) -> list[Example]:
    """Key-value retrieval: ``num_keys`` of the 75 records (the gold one at ``gold_position``)
    as a JSON object; the question names the key."""
    rows = _builder_rows("kv-retrieval", path, gold_position, num_keys, "--num-keys")
    examples = []
    for i, row in enumerate(rows):
        rng = random.Random(f"{seed}/{i}")
        others = [kv for kv in row["ordered_kv_records"] if kv[0] != row["key"]]
        others = [others[j] for j in sorted(rng.sample(range(len(others)), min(num_keys - 1, len(others))))]
        at = _gold_index(gold_position, len(others) + 1, rng)
        records = others[:at] + [[row["key"], row["value"]]] + others[at:]
        lines = [f'"{k}": "{v}"' for k, v in records]
        context = "JSON data:\n{" + ",\n ".join(lines) + "}"
        start = context.index(lines[at])
        question = f'{KV_INSTRUCTION} Key: "{row["key"]}"'
        examples.append(Example(f"kv-{i}", context, question, (row["value"],), ((start, start + len(lines[at])),), f"kv-{i}", {"gold_index": at}))
    return examples


def split_examples(examples: list[Example], split: str, seed: int = 0) -> list[Example]:
    """The ``dev`` or ``test`` part (disjoint, by context group, fixed by ``seed``) or ``all``;
    returned in the shuffled group order, so ``[:N]`` is a seeded sample that keeps groups whole."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.group, []).append(ex)
    order = sorted(groups)
    random.Random(f"split/{seed}").shuffle(order)
    cut = round(len(order) * DEV_FRACTION)
    chosen = order if split == "all" else order[:cut] if split == "dev" else order[cut:]
    return [ex for g in chosen for ex in groups[g]]


def load_dataset(name: str, *, split: str = "dev", seed: int = 0, limit: int | None = None, num_docs: int = 10,
                 gold_position: str | None = None, num_keys: int = 25, encoding: str | None = None, doc_pool: int | None = None) -> list[Example]:
    """A shipped dataset by name, or a JSONL file by path (``encoding``: its text encoding, default
    UTF-8); split, then the first ``limit``."""
    if name == "squad":
        examples = load_squad()
    elif name == "nq-multidoc":
        examples = load_nq_multidoc(num_docs=num_docs, gold_position=gold_position or "middle", seed=seed, doc_pool=doc_pool)
    elif name == "kv-retrieval":
        examples = load_kv_retrieval(num_keys=num_keys, gold_position=gold_position or "random", seed=seed)
    elif name.endswith((".jsonl", ".jsonl.gz")) or Path(name).is_file():
        examples = load_jsonl(name, encoding)
    else:
        raise DatasetError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a path to a .jsonl file")
    examples = split_examples(examples, split, seed)
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be at least 1, got {limit}")
        examples = examples[:limit]
    if not examples:
        raise DatasetError(f"the {split} split of {name} is empty (a file this small needs --split all)")
    return examples
