"""The analysis graph's export in a forked worker: same files as exporting it in-process,
errors and crashes of the worker reported as one clear line, and the worker stopped when the
parent fails."""

import json
import os
import sys

import pytest

from steerc.build import compile_engine
from steerc.backends.onnx.forked import ForkedCall, can_fork
from steerc.errors import EngineError
from steerc.settings import CompileSettings

# Not can_fork(): the suite sets STEERC_PARALLEL_EXPORT=0 (tests/conftest.py); this module turns it on.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2, reason="needs fork and two cores")


@pytest.fixture(autouse=True)
def _parallel_export(monkeypatch):
    monkeypatch.setenv("STEERC_PARALLEL_EXPORT", "1")
    assert can_fork()


def test_worker_reports_its_seconds(tmp_path):
    out = tmp_path / "written"
    call = ForkedCall(lambda: out.write_text("child"), tmp_path / "report.json", "writing")
    assert call.join() >= 0 and out.read_text() == "child"
    assert not (tmp_path / "report.json").exists()


def test_worker_error_is_one_line(tmp_path):
    def fail():
        raise ValueError("no such graph")

    call = ForkedCall(fail, tmp_path / "report.json", "exporting the analysis graph")
    with pytest.raises(EngineError, match="exporting the analysis graph failed in its worker process: ValueError: no such graph"):
        call.join()


def test_worker_that_dies_is_reported(tmp_path):
    call = ForkedCall(lambda: os._exit(3), tmp_path / "report.json", "exporting")
    with pytest.raises(EngineError, match="died without a report.*STEERC_PARALLEL_EXPORT=0"):
        call.join()


def test_cancel_stops_the_worker(tmp_path):
    import time

    call = ForkedCall(lambda: time.sleep(60), tmp_path / "report.json", "sleeping")
    start = time.perf_counter()
    call.cancel()
    assert time.perf_counter() - start < 30
    with pytest.raises(ChildProcessError):
        os.waitpid(call.pid, os.WNOHANG)  # reaped


def test_parallel_export_writes_the_same_engine(tiny_folder, tmp_path, monkeypatch):
    """Eager attention: the analysis graph cannot be derived from the step graph, so it is exported."""
    settings = CompileSettings(max_seq_len=64, max_batch=4, attn_implementation="eager")
    manifests = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("STEERC_PARALLEL_EXPORT", mode)
        manifests[mode] = compile_engine(str(tiny_folder), tmp_path / mode, settings)
    assert manifests["1"]["compile_seconds"]["export_graphs"]["parallel"] is True
    assert manifests["0"]["compile_seconds"]["export_graphs"]["parallel"] is False
    assert manifests["1"]["files"] == manifests["0"]["files"]  # sha256 of every file, analysis graph included
    assert not list((tmp_path / "1").glob(".analysis-export*"))
    assert json.loads((tmp_path / "1" / "steerc.json").read_text())["analysis"]["model"] == "analysis.onnx"
