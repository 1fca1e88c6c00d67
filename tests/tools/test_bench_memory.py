"""tools/bench_memory.py on the tiny text engine: every variant in its own process, the table and JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steerc.eval.data import data_dir

ROOT = Path(__file__).resolve().parents[2]
SQUAD = data_dir() / "squad-dev-v1.1.json.gz"


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs the SQuAD dev set in ../shared/data (or $STEERC_DATA)")
def test_tiny_run_writes_the_report(tiny_text_engine, tmp_path):
    out = tmp_path / "memory.json"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_memory.py"), str(tiny_text_engine), "--context", "120", "--new-tokens", "2",
                             "--steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| share | peak RSS (MiB)" in result.stdout and "[weights] answered" in result.stderr and "decode timing" in result.stderr
    report = json.loads(out.read_text())
    assert [r["share"] for r in report["results"]] == ["off", "arena", "weights"]
    for r in report["results"]:
        assert r["effective_share"] == r["share"] and r["context_tokens"] == 120 and r["cache"] == "memory"
        assert 0 < r["after_load_mib"] <= r["peak_mib"] and r["decode_step_ms"] > 0 and r["pss_mib"] > 0
