"""Answer metrics: SQuAD exact match and token F1 (the official v1.1 normalisation) and
``best_subspan_em`` (Lost in the Middle: a normalised gold answer occurs in the normalised
prediction). Each takes one prediction and every gold answer and keeps the best match."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["normalize_answer", "exact_match", "f1_score", "best_subspan_em", "score", "METRICS"]

METRICS = ("em", "f1", "subspan_em")
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _golds(answers: Sequence[str]) -> Sequence[str]:
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    return answers


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in _golds(answers)))


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    return max(_token_f1(prediction, a) for a in _golds(answers))


def best_subspan_em(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) in pred for a in _golds(answers)))


def score(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every metric of one prediction (the summary picks each dataset's primary one)."""
    return {"em": exact_match(prediction, answers), "f1": f1_score(prediction, answers), "subspan_em": best_subspan_em(prediction, answers)}
