"""Uncertainty for small evaluations: percentile bootstrap intervals for a mean, and a paired
comparison of two methods on the same examples (bootstrap interval of the mean difference
plus a sign-flip permutation p-value), and the help and harm rates of a method against a
baseline on the same examples. Deterministic for a given seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "Paired", "bootstrap_mean", "help_and_harm", "paired_comparison"]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


@dataclass(frozen=True)
class Paired:
    diff: Interval  # mean of (method - baseline) per example, with its bootstrap interval
    p_value: float  # two-sided, sign-flip permutation test of the mean difference
    wins: int  # examples where the method scored higher
    losses: int

    @property
    def significant(self) -> bool:
        return self.diff.low > 0 or self.diff.high < 0

    def to_dict(self) -> dict:
        return {"diff": self.diff.to_dict(), "p_value": self.p_value, "wins": self.wins, "losses": self.losses, "significant": self.significant}


def _values(values) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-D list of scores, got shape {v.shape}")
    return v


def bootstrap_mean(values, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval (examples resampled with replacement)."""
    v = _values(values)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (resamples, v.size))].mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(v.mean()), float(low), float(high), int(v.size))


def paired_comparison(method, baseline, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Paired:
    """``method`` vs ``baseline`` scored on the same examples, in the same order."""
    a, b = _values(method), _values(baseline)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same examples: {a.size} vs {b.size}")
    d = a - b
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), (resamples, d.size))
    observed = abs(d.mean())
    p = (1 + int((np.abs((signs * d).mean(1)) >= observed - 1e-12).sum())) / (resamples + 1)
    return Paired(bootstrap_mean(d, confidence=confidence, resamples=resamples, seed=seed), float(min(1.0, p)), int((d > 0).sum()), int((d < 0).sum()))


def help_and_harm(method_right, baseline_right, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[Interval, Interval]:
    """Help: the share of examples the baseline gets wrong and the method right; harm: right under
    the baseline, wrong under the method. ``*_right`` are 0/1 per example, in the same order; each
    rate comes with its bootstrap interval (examples resampled, so the pair stays together)."""
    a, b = _values(method_right), _values(baseline_right)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same examples: {a.size} vs {b.size}")
    if not np.isin(a, (0, 1)).all() or not np.isin(b, (0, 1)).all():
        raise ValueError("help and harm need right/wrong scores (0 or 1 per example), e.g. subspan EM")
    helped = ((b == 0) & (a == 1)).astype(np.float64)
    harmed = ((b == 1) & (a == 0)).astype(np.float64)
    return (bootstrap_mean(helped, confidence=confidence, resamples=resamples, seed=seed),
            bootstrap_mean(harmed, confidence=confidence, resamples=resamples, seed=seed))
