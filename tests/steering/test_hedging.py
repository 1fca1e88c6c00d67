"""Hedged evidence steering and fused ranking against hand computations (steering/evidence.py)."""

import math

import numpy as np
import pytest

from steerc.steering.evidence import HEDGES, Units, choose_units, evidence_bias, fused_scores, hedge, hedged_bias, token_strength, unit_shares

LOG_ALPHA = math.log(0.1)


def _bias(scores, mode, sharpness=1.0, count=1):
    """The bias over 4 context keys (one token per unit) of one steered head, after a 1-token head."""
    scores = np.asarray(scores, np.float32)
    units = Units("sentence", np.zeros((len(scores), 2), np.int64), np.array([[u, u + 1] for u in range(len(scores))]))
    hedged = hedge(scores, choose_units(scores, count), mode, sharpness)
    return hedged_bias(token_strength(units, hedged, len(scores)), 1, 1 + len(scores), 1, 1, LOG_ALPHA, [(0, 0)])[0, 0, 1:], hedged


@pytest.mark.parametrize("mode", HEDGES[1:])
def test_a_flat_distribution_gives_zero_bias(mode):
    bias, hedged = _bias([2.0, 2.0, 2.0, 2.0], mode)
    np.testing.assert_array_equal(bias, 0.0)
    assert hedged.confidence == 0.0


def test_off_is_todays_bias_whatever_the_distribution():
    for scores in ([2.0, 2.0, 2.0, 2.0], [0.1, 5.0, 0.2, 0.0]):
        bias, _ = _bias(scores, "off")
        keep = np.zeros(4, bool)
        keep[int(np.argmax(scores))] = True
        np.testing.assert_array_equal(bias, evidence_bias(keep, 1, 5, 1, 1, LOG_ALPHA, [(0, 0)])[0, 0, 1:])


@pytest.mark.parametrize("mode", HEDGES)
def test_one_dominant_unit_gives_todays_bias(mode):
    bias, hedged = _bias([0.0, 9.0, 0.0, 0.0], mode)
    want = np.full(4, LOG_ALPHA, np.float32)
    want[1] = 0.0
    np.testing.assert_allclose(bias, want, rtol=1e-6)
    assert hedged.confidence == pytest.approx(1.0)


def test_soft_two_close_units_share_the_emphasis():
    # shares 0.45, 0.4, 0.1, 0.05: unit 1 keeps 0.4/0.45 of the emphasis, by hand.
    bias, hedged = _bias([4.5, 4.0, 1.0, 0.5], "soft")
    np.testing.assert_allclose(hedged.shares, [0.45, 0.4, 0.1, 0.05], rtol=1e-6)
    np.testing.assert_allclose(bias, LOG_ALPHA * np.array([0.0, 1 - 0.4 / 0.45, 1 - 0.1 / 0.45, 1 - 0.05 / 0.45]), rtol=1e-5)
    assert abs(bias[1]) < 0.15 * abs(LOG_ALPHA)  # nearly as emphasised as the best unit
    sharper, _ = _bias([4.5, 4.0, 1.0, 0.5], "soft", sharpness=4)
    assert sharper[1] == pytest.approx(LOG_ALPHA * (1 - (0.4 / 0.45) ** 4), rel=1e-5) and sharper[1] < bias[1]


def test_margin_and_entropy_scale_the_strength_by_hand():
    scores = [4.0, 2.0, 2.0, 0.0]  # shares 0.5, 0.25, 0.25, 0
    bias, hedged = _bias(scores, "margin")
    assert hedged.confidence == pytest.approx(1 - 0.25 / 0.5)
    np.testing.assert_allclose(bias, [0.0, *[0.5 * LOG_ALPHA] * 3], rtol=1e-6)
    bias, hedged = _bias(scores, "entropy")
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert hedged.confidence == pytest.approx(1 - entropy / math.log(4))
    np.testing.assert_allclose(bias[1:], hedged.confidence * LOG_ALPHA, rtol=1e-6)
    # margin with two chosen units: the last chosen against the best unchosen
    _, two = _bias(scores, "margin", count=2)
    assert two.confidence == pytest.approx(0.0)


def test_tokens_outside_units_get_the_largest_strength():
    units = Units("sentence", np.zeros((2, 2), np.int64), np.array([[0, 2], [3, 5]]))
    hedged = hedge(np.array([3.0, 1.0]), [0], "margin")
    strength = token_strength(units, hedged, 6)
    np.testing.assert_allclose(strength, [0, 0, 2 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_nothing_chosen_or_no_score_steers_nothing():
    assert hedge(np.array([1.0, 2.0]), [], "off").confidence == 0.0  # min_share refused every unit
    assert hedge(np.zeros(3), [0], "soft").confidence == 0.0
    np.testing.assert_array_equal(unit_shares(np.zeros(3)), 0.0)


def test_rank_fusion_small_example():
    attention = np.array([0.5, 0.3, 0.2, 0.0])  # ranks 1, 2, 3, 4
    lexical = np.array([2.0, 2.0, 0.0, 3.0])  # ranks 2, 2, (no overlap), 1
    k = 1.0
    want = [1 / (k + 1) + 1 / (k + 2), 1 / (k + 2) + 1 / (k + 2), 1 / (k + 3), 1 / (k + 4) + 1 / (k + 1)]
    np.testing.assert_allclose(fused_scores(attention, lexical, k), want, rtol=1e-6)
    assert int(np.argmax(fused_scores(attention, lexical))) == 0  # first in attention, close second in overlap
    # Attention separates the two units overlap alone cannot (the demo question's sentences 1 and 2).
    assert fused_scores(np.array([0.2, 0.6]), np.array([3.0, 3.0])).argmax() == 1
    with pytest.raises(ValueError, match="different units"):
        fused_scores(attention, lexical[:2])


def test_bad_hedge_settings():
    with pytest.raises(ValueError, match="hedge must be one of"):
        hedge(np.ones(2), [0], "bogus")
    with pytest.raises(ValueError, match="sharpness must be positive"):
        hedge(np.ones(2), [0], "soft", sharpness=0)


@pytest.mark.parametrize("fields, message", [
    ({"hedge": "bogus"}, r"hedge must be one of \('off', 'soft', 'margin', 'entropy'\), got 'bogus'"),
    ({"sharpness": -1}, "sharpness must be a number > 0"),
    ({"alpha": -1}, r"alpha must be a number in \(0, 1\]"),
    ({"min_share": 1.5}, r"min_share must be in \[0, 1\)"),
    ({"self_check": 1.5}, r"self_check must be in \[0, 1\)"),
    ({"rank_by": "lexical", "self_check": 0.3}, "use it with rank_by 'attention' or 'fused'"),
])
def test_bad_hedging_options_are_refused_in_one_line(fields, message):
    from steerc.steering import SteerConfig

    with pytest.raises(ValueError, match=message) as err:
        SteerConfig(method="query", **fields)
    assert "\n" not in str(err.value)
