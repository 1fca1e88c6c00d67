"""Query-aware evidence selection: units, calibration, pooling, choice, bias, against hand computations."""

import numpy as np
import pytest

from steerc.steering.evidence import (
    Units,
    adaptive_alphas,
    choose_units,
    context_units,
    evidence_bias,
    token_scores,
    token_spans,
    unit_scores,
)


def _offsets(text: str) -> list[tuple[int, int]]:
    """Whitespace 'tokens' with their character ranges (a fast tokenizer's offset mapping)."""
    out, at = [], 0
    for word in text.split():
        start = text.index(word, at)
        out.append((start, start + len(word)))
        at = start + len(word)
    return out


def test_token_spans_and_units_sentence_vs_paragraph():
    text = "Alpha beta. Gamma delta epsilon. Zeta."
    offsets = _offsets(text)
    np.testing.assert_array_equal(token_spans(offsets, [(0, 11), (12, 32), (33, 38), (100, 120)]), [[0, 2], [2, 5], [5, 6], [0, 0]])
    units = context_units(text, offsets)  # one line: sentences
    assert units.kind == "sentence" and units.tokens.tolist() == [[0, 2], [2, 5], [5, 6]]
    docs = "Document [1] one two\nDocument [2] three\n\nDocument [3] four five six"
    units = context_units(docs, _offsets(docs))  # three non-empty lines: documents
    assert units.kind == "paragraph" and len(units) == 3 and units.tokens.tolist() == [[0, 4], [4, 7], [7, 12]]
    assert docs[units.chars[1, 0] : units.chars[1, 1]] == "Document [2] three"
    assert context_units(docs, _offsets(docs), "sentence").kind == "sentence"
    with pytest.raises(ValueError, match="unit must be one of"):
        context_units(text, offsets, "word")


def test_calibrated_scores_and_pooling_by_hand():
    # 2 layers x 2 heads x 4 context tokens.
    question = np.array([[[0.1, 0.5, 0.2, 0.2], [0.3, 0.3, 0.3, 0.1]], [[0.4, 0.1, 0.4, 0.1], [0.0, 0.2, 0.6, 0.2]]])
    calibration = np.array([[[0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]], [[0.3, 0.3, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    selector = [(0, 0), (1, 1)]
    # (0,0): max(0, [-.1, .3, 0, 0]) = [0, .3, 0, 0]; (1,1): max(0, [-.25, -.05, .35, -.05]) = [0, 0, .35, 0]
    np.testing.assert_allclose(token_scores(question, calibration, selector), [0.0, 0.3, 0.35, 0.0], atol=1e-7)
    units = Units("sentence", np.array([[0, 5], [6, 10]]), np.array([[0, 2], [2, 4]]))
    np.testing.assert_allclose(unit_scores(np.array([0.0, 0.3, 0.35, 0.0]), units), [0.3, 0.35], atol=1e-6)
    with pytest.raises(ValueError, match="cover different keys"):
        token_scores(question, calibration[..., :3], selector)
    with pytest.raises(ValueError, match="no selector heads"):
        token_scores(question, calibration, [])


def test_choose_units_ties_count_and_confidence():
    scores = np.array([0.1, 0.4, 0.4, 0.1])
    assert choose_units(scores, 1) == [1]  # tie: the earlier unit
    assert choose_units(scores, 2) == [1, 2]
    assert choose_units(scores, 2, min_share=0.5) == []  # 0.4 of 1.0 is below the share asked for
    assert choose_units(np.array([0.0, 0.0]), 1) == []  # nothing points anywhere
    with pytest.raises(ValueError, match="at least 1"):
        choose_units(scores, 0)


def test_evidence_bias_lands_on_the_other_context_keys_of_steered_heads():
    keep = np.array([False, True, True, False])
    bias = evidence_bias(keep, offset=2, total=8, num_layers=2, num_heads=3, log_alpha=-1.5, pairs=[(0, 2), (1, 0)])
    want = np.zeros((2, 3, 8), np.float32)
    want[0, 2, [2, 5]] = want[1, 0, [2, 5]] = -1.5  # context keys 2..5; tokens 1 and 2 (keys 3, 4) are the evidence
    np.testing.assert_array_equal(bias, want)
    per_head = np.array([[0.0, 0.0, -0.5], [-2.0, 0.0, 0.0]])
    bias = evidence_bias(keep, 2, 8, 2, 3, per_head, [(0, 2), (1, 0)])
    assert bias[0, 2, 2] == -0.5 and bias[1, 0, 5] == -2.0 and bias[:, :, 3:5].sum() == 0
    with pytest.raises(ValueError, match="beyond"):
        evidence_bias(keep, 6, 8, 2, 3, -1.0, [])


def test_adaptive_alpha_reaches_the_target_share():
    # One head: keys [head, c0, c1, c2, query]; evidence = c1.
    attention = np.array([[[0.2, 0.3, 0.1, 0.3, 0.1]]])  # e = 0.1, o = 0.6, r = 0.3
    keep = np.array([False, True, False])
    a = adaptive_alphas(attention, keep, offset=1, target=0.25, floor=0.01)
    # a = (e / p - e - r) / o = (0.4 - 0.1 - 0.3) / 0.6 = 0: below the floor, so the floor.
    assert a[0, 0] == pytest.approx(0.01)
    a = adaptive_alphas(attention, keep, offset=1, target=0.125, floor=0.01)  # (0.8 - 0.4) / 0.6
    assert a[0, 0] == pytest.approx(2 / 3)
    scaled = attention.copy()
    scaled[0, 0, [1, 3]] *= a[0, 0]
    assert scaled[0, 0, 2] / scaled.sum() == pytest.approx(0.125)  # the evidence's share after steering
    assert adaptive_alphas(attention, keep, 1, target=0.05, floor=0.01)[0, 0] == 1.0  # already above the target: no steering
    with pytest.raises(ValueError, match="target evidence share"):
        adaptive_alphas(attention, keep, 1, target=1.0, floor=0.01)
