"""Character spans of a context: parse them, map them to tokens, find sentences.

PASTA steers attention towards user-marked spans of the context; AutoPASTA lets the model
name the key sentence itself and maps that generated sentence back to the closest sentence
of the context. Spans are half-open character ranges ``(start, end)`` into the text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["parse_spans", "spans_to_token_mask", "split_sentences", "best_sentence"]

Span = tuple[int, int]

# A sentence ends after . ! ? (plus closing quotes or brackets) followed by whitespace, or at a newline.
_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)|\n")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "fig"})
_LAST_WORD = re.compile(r"(\w+(?:\.\w+)*)$")
_WORD = re.compile(r"\w+")


def parse_spans(text: str) -> list[Span]:
    """``"START:END[,START:END...]"`` -> ``[(start, end), ...]``; ints >= 0 with start < end."""
    spans = []
    for piece in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", piece)
        if match is None:
            raise ValueError(f"bad span {piece.strip()!r} in {text!r}: write START:END character offsets, e.g. 10:42,80:95")
        start, end = int(match[1]), int(match[2])
        if start >= end:
            raise ValueError(f"bad span {piece.strip()!r}: START must be less than END (spans are half-open)")
        spans.append((start, end))
    return spans


def _check_span(span) -> Span:
    start, end = (int(x) for x in span)
    if start < 0 or start >= end:
        raise ValueError(f"bad span {start}:{end}: need 0 <= START < END (spans are half-open)")
    return start, end


def spans_to_token_mask(offsets: Sequence[Span], spans: str | Sequence[Span], length: int | None = None) -> np.ndarray:
    """Bool ``[len(offsets)]``: tokens whose character range overlaps any span.

    ``offsets`` is a fast tokenizer's offset mapping; zero-width tokens (specials) never match.
    ``length`` is the text length, to reject spans past its end. Every span must cover a token.
    """
    spans = parse_spans(spans) if isinstance(spans, str) else [_check_span(s) for s in spans]
    if not spans:
        raise ValueError("no spans given: pass at least one START:END character range")
    bounds = np.array([(0, 0) if o is None else o for o in offsets], dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    mask = np.zeros(len(bounds), bool)
    for start, end in spans:
        if length is not None and end > length:
            raise ValueError(f"span {start}:{end} ends past the text, which has {length} characters")
        hit = (starts < ends) & (starts < end) & (start < ends)
        if not hit.any():
            raise ValueError(f"span {start}:{end} covers no token: check the offsets are character offsets into this text")
        mask |= hit
    return mask


def _strip(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_abbreviation(text: str, start: int, stop: int) -> bool:
    if text[stop] != ".":
        return False
    word = _LAST_WORD.search(text, start, stop)
    if word is None:
        return False
    parts = word[1].split(".")  # initials and dotted acronyms: "J.", "U.S.", "e.g."
    return word[1].lower() in _ABBREVIATIONS or (all(len(p) == 1 for p in parts) and (len(parts) > 1 or word[1].isupper()))


def split_sentences(text: str) -> list[Span]:
    """Character ranges of the sentences of ``text``, without surrounding whitespace."""
    sentences, start = [], 0
    for match in _END.finditer(text):
        if match[0] != "\n" and _is_abbreviation(text, start, match.start()):
            continue
        sentences.append(_strip(text, start, match.end()))
        start = match.end()
    sentences.append(_strip(text, start, len(text)))
    return [(s, e) for s, e in sentences if s < e]


def _f1(generated: Counter, sentence: Counter) -> float:
    common = sum((generated & sentence).values())
    if not common:
        return 0.0
    precision, recall = common / sum(generated.values()), common / sum(sentence.values())
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> Counter:
    return Counter(_WORD.findall(text.lower()))


def best_sentence(generated: str, text: str, sentences: Sequence[Span] | None = None) -> tuple[Span, float]:
    """AutoPASTA: the sentence of ``text`` closest to ``generated`` and its word-F1 in [0, 1].

    ``sentences`` defaults to :func:`split_sentences`; ties go to the earlier sentence.
    """
    sentences = split_sentences(text) if sentences is None else [_check_span(s) for s in sentences]
    if not sentences:
        raise ValueError("the context has no sentence to map the generated key sentence to")
    words = _words(generated)
    best, best_score = sentences[0], 0.0
    if not words:
        return best, best_score
    for start, end in sentences:
        score = _f1(words, _words(text[start:end]))
        if score > best_score:
            best, best_score = (start, end), score
    return best, best_score
