"""tools/compare_runs.py pairs runs made on different engines by example id (synthetic predictions)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _write(folder: Path, variant: str, scores: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    rows = [{"id": i, "variant": variant, "method": "none", "em": s, "f1": s, "subspan_em": s, "cache": "miss", "prepare_s": 0.1, "ttft_s": 0.2,
             "selected_per_layer": 3.0} for i, s in scores.items()]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_runs_are_paired_on_the_examples_both_answered(tmp_path):
    _write(tmp_path / "a", "none", {f"e{i}": 1.0 for i in range(30)})
    _write(tmp_path / "b", "none", {**{f"e{i}": 0.0 for i in range(20)}, "extra": 1.0})  # loses on 20 shared examples
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_runs.py"), "--run", f"base={tmp_path / 'a'}", "--run", f"other={tmp_path / 'b'}",
                             "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    other = summary["variants"]["other"]
    assert summary["baseline"] == "base" and other["n"] == 20 and summary["run"]["examples"] == 20
    assert other["vs_baseline"]["f1"]["diff"]["mean"] == -1.0 and other["vs_baseline"]["f1"]["losses"] == 20


def test_a_missing_variant_is_a_clear_error(tmp_path):
    _write(tmp_path / "a", "none", {"e0": 1.0})
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_runs.py"), "--run", f"base={tmp_path / 'a'}", "--run", f"x={tmp_path / 'a'}:qllm",
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "no answered rows of variant 'qllm'" in result.stderr
