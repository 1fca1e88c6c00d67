import numpy as np
import pytest

from steerc.eval.stats import bootstrap_mean, paired_comparison


def test_bootstrap_mean_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(0).binomial(1, 0.3, 200).astype(float)
    ci = bootstrap_mean(values, seed=1)
    assert ci.low < ci.mean < ci.high and ci.n == 200
    assert ci.mean == pytest.approx(values.mean())
    # the normal-approximation half-width of a proportion is about 1.96 * sqrt(p(1-p)/n)
    half = 1.96 * np.sqrt(values.mean() * (1 - values.mean()) / 200)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.2)
    assert bootstrap_mean(values, seed=1) == ci


def test_bootstrap_of_constant_values_is_a_point():
    ci = bootstrap_mean([0.5] * 10)
    assert (ci.low, ci.mean, ci.high) == (0.5, 0.5, 0.5)


def test_paired_comparison_detects_a_consistent_gain():
    base = np.random.default_rng(2).random(100)
    result = paired_comparison(base + 0.05, base)
    assert result.significant and result.p_value < 0.001 and result.wins == 100 and result.losses == 0
    assert result.diff.mean == pytest.approx(0.05)


def test_paired_comparison_of_noise_is_not_significant():
    rng = np.random.default_rng(3)
    a, b = rng.binomial(1, 0.5, 60).astype(float), rng.binomial(1, 0.5, 60).astype(float)
    same = paired_comparison(a, a)
    assert same.p_value == 1.0 and not same.significant and same.wins == same.losses == 0
    noise = paired_comparison(a, b)
    assert noise.diff.low < 0 < noise.diff.high or noise.p_value < 0.05  # the interval and the test agree


def test_paired_comparison_needs_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        paired_comparison([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def test_help_and_harm_count_the_flips_against_the_baseline():
    from steerc.eval.stats import help_and_harm

    baseline = [0, 0, 0, 1, 1, 1, 1, 0]
    method = [1, 1, 0, 1, 0, 1, 1, 0]  # two wrong -> right, one right -> wrong
    helped, harmed = help_and_harm(method, baseline, resamples=2000)
    assert helped.mean == 2 / 8 and harmed.mean == 1 / 8 and helped.n == harmed.n == 8
    assert helped.low <= 2 / 8 <= helped.high and 0 <= harmed.low <= 1 / 8 <= harmed.high
    same, never = help_and_harm(baseline, baseline)
    assert same.mean == never.mean == 0 and same.high == 0  # no flips: a point at 0


def test_help_and_harm_need_right_or_wrong_scores_on_the_same_examples():
    from steerc.eval.stats import help_and_harm

    with pytest.raises(ValueError, match="right/wrong scores"):
        help_and_harm([0.5, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="same examples"):
        help_and_harm([1, 0], [1, 0, 1])
