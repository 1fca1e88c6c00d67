"""Query-aware evidence selection: which units of a context (its sentences, or the documents of a
multi-document input) a question points at, from the question's own attention.

Shapes: ``L`` layers, ``H`` query heads, ``N`` context tokens, ``U`` units.

* ``question [L, H, N]``: the attention the question's rows pay to each context key, averaged
  over the rows (each row sums to 1 over every key it sees).
* ``calibration [L, H, N]``: the same for a content-free question (``CALIBRATION_QUESTION``)
  behind the same layout. It holds what attention prefers regardless of the question (position,
  separators, titles), is query-independent, and so is computed once per stored context
  (calibration as in ICR, arXiv 2410.02642, and "Found in the middle", arXiv 2406.16008).
* ``token_scores [N] = sum over selector heads of max(0, question - calibration)``.
* ``unit_scores [U]``: the token scores summed over each unit's tokens (the calibrated attention
  mass the unit receives), then :func:`choose_units` keeps the best ``count`` units.
* ``shares [U]``: the unit scores over their sum, the *evidence distribution*.
* **Hedging** (:func:`hedge`) turns the distribution into a per-unit strength in ``[0, 1]``, the
  fraction of ``log(alpha)`` its tokens get (0: emphasised, 1: fully down-weighted), so the bias
  follows the selector's confidence instead of giving the top unit everything:

  - ``off``: the chosen units 0, every other token 1 (the bias before hedging existed).
  - ``soft``: soft top-k, unit ``u`` gets ``1 - (share_u / share_max) ** sharpness``: the best
    unit 0, a unit as strong as it 0 too (two close units share the emphasis), a weak one
    nearly 1; a flat distribution gives 0 everywhere (no bias).
  - ``margin``: the chosen units 0 and the rest ``1 - share_next / share_last_chosen`` (the
    relative margin between the last chosen unit and the best unchosen one: a clear pick
    steers fully, a tie steers nothing).
  - ``entropy``: the chosen units 0 and the rest ``1 - H(shares) / log U`` (one dominant unit
    steers fully, a flat distribution steers nothing).

  Tokens outside every unit (separators) get the largest strength any unit gets.
* ``fused`` ranking (:func:`fused_scores`): reciprocal rank fusion of the attention and the
  word-overlap rankings, ``1 / (k + rank)`` summed over both, with no word-overlap credit for a
  unit that shares no word with the question.

Everything here is plain numpy and is the reference the tests compare against.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from steerc.steering.spans import split_sentences

__all__ = ["CALIBRATION_QUESTION", "UNITS", "Units", "context_units", "token_spans", "token_scores", "unit_scores", "choose_units",
           "evidence_bias", "adaptive_alphas", "HEDGES", "Hedge", "unit_shares", "hedge", "fused_scores", "token_strength",
           "hedged_bias"]

CALIBRATION_QUESTION = "N/A"
UNITS = ("auto", "sentence", "paragraph")
HEDGES = ("off", "soft", "margin", "entropy")
RRF_K = 1.0  # reciprocal rank fusion's constant: with 5-10 units, 60 (the web-search value) would flatten every ranking
# A context with at least this many non-empty lines is a multi-document (or multi-record) input.
_MIN_PARAGRAPHS = 3
_LINE = re.compile(r"[^\n]*\S[^\n]*")

Span = tuple[int, int]


@dataclass(frozen=True)
class Units:
    """A context cut into units: ``kind`` ("sentence" or "paragraph"), their character ranges and
    token ranges ``[U, 2]`` (first token, one past the last)."""

    kind: str
    chars: np.ndarray  # [U, 2] int64
    tokens: np.ndarray  # [U, 2] int64

    def __len__(self) -> int:
        return len(self.chars)

    def token_mask(self, chosen: Sequence[int], num_tokens: int) -> np.ndarray:
        """Bool ``[N]``: the tokens of the chosen units."""
        mask = np.zeros(num_tokens, bool)
        for u in chosen:
            mask[self.tokens[u, 0] : self.tokens[u, 1]] = True
        return mask


def token_spans(offsets: Sequence[Span], spans: Sequence[Span]) -> np.ndarray:
    """``[U, 2]`` int64: each character span's first and one-past-last token (the tokens whose
    character range overlaps it; zero-width special tokens never do). A span that covers no
    token gets ``(0, 0)``."""
    bounds = np.array([(0, 0) if o is None else o for o in offsets], np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    out = np.zeros((len(spans), 2), np.int64)
    for i, (s, e) in enumerate(spans):
        hit = np.nonzero((starts < ends) & (starts < e) & (s < ends))[0]
        if len(hit):
            out[i] = hit.min(), hit.max() + 1
    return out


def context_units(text: str, offsets: Sequence[Span], unit: str = "auto", documents: Sequence[Span] = ()) -> Units:
    """Cut ``text`` into units. ``paragraph``: its non-empty lines (a multi-document input puts one
    document per line, as ``steerc eval`` does); ``sentence``: :func:`split_sentences`; ``auto``:
    the ``documents`` (character spans) of a context assembled from documents, else paragraphs
    when there are at least three, else sentences."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    lines = [m.span() for m in _LINE.finditer(text)]
    if unit == "auto" and len(documents):
        kind, spans = "document", [tuple(s) for s in documents]
    else:
        kind = unit if unit != "auto" else ("paragraph" if len(lines) >= _MIN_PARAGRAPHS else "sentence")
        spans = lines if kind == "paragraph" else split_sentences(text)
    tokens = token_spans(offsets, spans)
    keep = tokens[:, 1] > tokens[:, 0]
    return Units(kind, np.asarray(spans, np.int64).reshape(-1, 2)[keep], tokens[keep])


def token_scores(question: np.ndarray, calibration: np.ndarray, selector: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[N]``: ``max(0, question - calibration)`` summed over the selector (layer, head) pairs."""
    if question.shape != calibration.shape:
        raise ValueError(f"question attention {question.shape} and calibration {calibration.shape} cover different keys")
    if not selector:
        raise ValueError("no selector heads")
    layers, heads = np.asarray(selector, np.int64).T
    return np.clip(question[layers, heads] - calibration[layers, heads], 0, None).sum(0)


def unit_scores(scores: np.ndarray, units: Units) -> np.ndarray:
    """``[U]``: each unit's summed token score."""
    cums = np.concatenate([[0.0], np.cumsum(scores, dtype=np.float64)])
    return (cums[units.tokens[:, 1]] - cums[units.tokens[:, 0]]).astype(np.float32)


def choose_units(scores: np.ndarray, count: int, min_share: float = 0.0) -> list[int]:
    """The ``count`` best units (ties: the earlier unit), best first. ``min_share`` > 0 keeps
    only units holding at least that share of the total score (an empty list: not confident
    enough to steer)."""
    if count < 1:
        raise ValueError(f"the number of evidence units must be at least 1, got {count}")
    order = np.argsort(-scores, kind="stable")[:count]
    total = float(scores.sum())
    if total <= 0:
        return []
    return [int(u) for u in order if scores[u] / total >= min_share]


def evidence_bias(keep: np.ndarray, offset: int, total: int, num_layers: int, num_heads: int, log_alpha: np.ndarray | float,
                  pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[L, H, total]``: on each steered (layer, head), ``log_alpha`` (a number, or ``[L, H]``
    per head) on the context keys (positions ``offset .. offset + N``) not in ``keep [N]``; 0 on
    every other key (the instruction head, the question, generated tokens). The unhedged case of
    :func:`hedged_bias`."""
    return hedged_bias(~np.asarray(keep, bool), offset, total, num_layers, num_heads, log_alpha, pairs)


def adaptive_alphas(attention: np.ndarray, keep: np.ndarray, offset: int, target: float, floor: float) -> np.ndarray:
    """``[L, H]`` alphas that lift the evidence's attention share to ``target`` (Spotlight,
    arXiv 2505.12025, with the bias on the other context keys instead of on the evidence).

    ``attention [L, H, K]`` is the question rows' mean attention over every key. With ``e`` the
    share on the evidence, ``o`` on the other context keys and ``r`` on everything else, scaling
    the other context keys by ``a`` gives the evidence ``e / (e + a*o + r)``; solving for the
    target gives ``a = (e / target - e - r) / o``, clipped to ``[floor, 1]`` (1: already there,
    no steering; ``floor``: the strongest steering allowed)."""
    if not 0 < target < 1:
        raise ValueError(f"the target evidence share must be in (0, 1), got {target}")
    N = len(keep)
    context = attention[..., offset : offset + N]
    e = context[..., keep].sum(-1)
    o = context[..., ~keep].sum(-1)
    r = np.clip(attention.sum(-1) - e - o, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(o > 0, (e / target - e - r) / o, 1.0)
    return np.clip(np.nan_to_num(a, nan=1.0), floor, 1.0).astype(np.float32)



def unit_shares(scores: np.ndarray) -> np.ndarray:
    """``[U]``: the evidence distribution, each unit's share of the summed score (all 0 when the
    scores sum to nothing)."""
    scores = np.clip(np.asarray(scores, np.float64), 0, None)
    total = scores.sum()
    return (scores / total) if total > 0 else np.zeros_like(scores)


@dataclass(frozen=True)
class Hedge:
    """What hedging made of one question's evidence distribution."""

    shares: np.ndarray  # [U] the evidence distribution
    strength: np.ndarray  # [U] the fraction of log(alpha) on each unit's tokens (0: emphasised)
    confidence: float  # the largest fraction applied anywhere, also the tokens outside every unit's (0: nothing steered, 1: today's full bias)


def hedge(scores: np.ndarray, chosen: Sequence[int], mode: str = "off", sharpness: float = 1.0) -> Hedge:
    """Per-unit steering strength from the unit ``scores [U]`` (see the module docstring);
    ``chosen``: the units :func:`choose_units` kept, best first."""
    if mode not in HEDGES:
        raise ValueError(f"hedge must be one of {', '.join(HEDGES)}, got {mode!r}")
    if sharpness <= 0:
        raise ValueError(f"sharpness must be positive, got {sharpness}")
    shares = unit_shares(scores)
    U = len(shares)
    if not chosen or U == 0 or shares.max() <= 0:
        return Hedge(shares, np.zeros(U), 0.0)
    if mode == "soft":
        strength = 1.0 - (shares / shares.max()) ** sharpness
        return Hedge(shares, strength, float(strength.max()))
    if mode == "off":
        level = 1.0
    elif mode == "margin":
        rest = np.delete(shares, list(chosen))
        last = shares[list(chosen)].min()
        level = float(1.0 - rest.max() / last) if len(rest) and last > 0 else 0.0
    else:  # entropy
        p = shares[shares > 0]
        level = float(1.0 + (p * np.log(p)).sum() / np.log(U)) if U > 1 else 0.0
    level = min(1.0, max(0.0, level))
    strength = np.full(U, level)
    strength[list(chosen)] = 0.0
    return Hedge(shares, strength, level)


def fused_scores(attention: np.ndarray, lexical: np.ndarray, k: float = RRF_K) -> np.ndarray:
    """``[U]``: reciprocal rank fusion of two unit scorings, ``1 / (k + rank)`` per ranking (rank 1
    = best; ties share the better rank); a unit with no word overlap gets no lexical term."""
    def ranks(x: np.ndarray) -> np.ndarray:
        return np.array([1 + int((x > v).sum()) for v in x], np.float64)

    attention, lexical = np.asarray(attention, np.float64), np.asarray(lexical, np.float64)
    if attention.shape != lexical.shape:
        raise ValueError(f"the two rankings cover different units: {attention.shape} vs {lexical.shape}")
    return (1.0 / (k + ranks(attention)) + np.where(lexical > 0, 1.0 / (k + ranks(lexical)), 0.0)).astype(np.float32)


def token_strength(units: Units, hedged: Hedge, num_tokens: int) -> np.ndarray:
    """``[N]``: each context token's fraction of ``log(alpha)``."""
    out = np.full(num_tokens, hedged.confidence, np.float32)  # tokens outside every unit
    for u, (a, b) in enumerate(units.tokens):
        out[a:b] = hedged.strength[u]
    return out


def hedged_bias(strength: np.ndarray, offset: int, total: int, num_layers: int, num_heads: int, log_alpha: np.ndarray | float,
                pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[L, H, total]``: on each steered (layer, head), ``strength [N] * log_alpha`` (a number, or
    ``[L, H]`` per head) on the context keys (positions ``offset .. offset + N``); 0 on every
    other key. ``strength`` 1 is the full bias, 0 none."""
    N = len(strength)
    if offset + N > total:
        raise ValueError(f"the context ends at key {offset + N}, beyond the {total} keys covered")
    per_head = np.broadcast_to(np.asarray(log_alpha, np.float32), (num_layers, num_heads))
    bias = np.zeros((num_layers, num_heads, total), np.float32)
    strength = np.asarray(strength, np.float32)
    for layer, head in pairs:
        bias[layer, head, offset : offset + N] = strength * per_head[layer, head]
    return bias
