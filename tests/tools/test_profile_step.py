"""tools/profile_step.py: node events of the last N runs summed per op type, per step."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import profile_step  # noqa: E402


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _node(ts: int, dur: int, op: str, name: str) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_only_the_last_runs_count_per_step():
    events = [_run(0, 100), _node(10, 90, "MatMul", "prefill"),  # the prefill run: left out
              _run(200, 50), _node(210, 20, "MatMul", "a"), _node(230, 10, "Add", "b"),
              _run(300, 70), _node(310, 40, "MatMul", "a"), _node(350, 10, "Add", "b"),
              {"cat": "Node", "name": "a_fence_before", "ts": 305, "dur": 0}]
    result = profile_step.aggregate(events, steps=2, top=1)
    assert result["ops"] == {"MatMul": {"us": 30.0, "nodes": 1.0}, "Add": {"us": 10.0, "nodes": 1.0}}
    assert list(result["ops"]) == ["MatMul", "Add"]  # slowest first
    assert result["node_us"] == 40.0 and result["model_run_us"] == 60.0
    assert result["slowest"] == {"MatMul a": 30.0}


def test_too_few_runs_is_an_error():
    with pytest.raises(ValueError, match="fewer than the 3 steps"):
        profile_step.aggregate([_run(0, 10)], steps=3)
