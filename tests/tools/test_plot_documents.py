"""tools/plot_documents.py: the eval and bench variants read into per-(method, rule) lines, R = 0 joined to each."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plot():
    spec = importlib.util.spec_from_file_location("plot_documents", ROOT / "tools" / "plot_documents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variant(em: float, diff: tuple[float, float, float] | None = None) -> dict:
    out = {"n": 10, "metrics": {"subspan_em": {"mean": em}}}
    if diff:
        out["vs_reference"] = {"subspan_em": {"diff": dict(zip(("mean", "low", "high"), diff))}}
    return out


def test_quality_lines_per_method_and_rule(plot):
    summary = {"primary": "subspan_em", "variants": {
        "none": _variant(0.3), "none+docs@0": _variant(0.1, (-0.2, -0.3, -0.1)), "none+docs@0.15": _variant(0.2, (-0.1, -0.2, 0.0)),
        "none+docs@0.3/suffix": _variant(0.15, (-0.15, -0.25, -0.05))}}
    series, full = plot.quality(summary)
    assert full == {"none": pytest.approx(30.0)}
    first, suffix = series[("none", "first")], series[("none", "suffix")]  # unnamed variants ran the default rule
    assert [p[0] for p in first] == [0.0, 0.15] and [p[0] for p in suffix] == [0.0, 0.3]  # R = 0 joins every rule's line
    r, em, low, high = first[1]
    assert (em, low, high) == pytest.approx((20.0, 10.0, 30.0))  # the paired interval drawn around the variant's score


def test_speed_lines_from_the_bench(plot):
    bench = {"methods": {"query": {"full": {"median_speedup": 1.0}, "R=0": {"median_speedup": 12.0},
                                   "R=0.15/first": {"median_speedup": 3.0}, "R=0.15/question": {"median_speedup": 4.1}}}}
    lines = plot.speed(bench)
    assert lines == {("query", "first"): [(0.0, 12.0), (0.15, 3.0)], ("query", "question"): [(0.0, 12.0), (0.15, 4.1)]}
