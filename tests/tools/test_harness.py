"""tools/harness.py, the benchmarks' shared setup: interleaving, medians, JSON out, engine paths, the plot;
and tools/bench_decode.py reporting a recorded run through it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import bench_decode  # noqa: E402
import harness  # noqa: E402


def test_interleave_runs_every_variant_once_per_repeat_in_order_after_a_warm_up():
    calls = []

    def run(name):
        def call():
            calls.append(name)
            return f"{name}{sum(c == name for c in calls)}"
        return call

    samples = harness.interleave({"a": run("a"), "b": run("b"), "c": run("c")}, 3)
    assert calls == ["a", "b", "c"] * 4  # the warm-up round, then 3 rounds A B C
    assert samples == {"a": ["a2", "a3", "a4"], "b": ["b2", "b3", "b4"], "c": ["c2", "c3", "c4"]}  # the warm-up is not recorded
    calls.clear()
    assert harness.interleave({"a": run("a"), "b": run("b")}, 2, warmup=False) == {"a": ["a1", "a2"], "b": ["b1", "b2"]}
    assert calls == ["a", "b", "a", "b"]
    with pytest.raises(ValueError, match="repeats"):
        harness.interleave({"a": run("a")}, 0)


def test_medians_of_scalars_and_of_tuple_fields():
    assert harness.medians({"a": [3.0, 1.0, 2.0], "b": [4.0, 10.0]}) == {"a": 2.0, "b": 7.0}
    samples = {"x": [(1.0, 30.0, "t"), (3.0, 10.0, "t"), (2.0, 20.0, "t")]}
    assert harness.medians(samples, ("ttft_s", "decode_tok_s")) == {"x": {"ttft_s": 2.0, "decode_tok_s": 20.0}}


def test_write_json_adds_machine_and_command_and_keeps_given_ones(tmp_path):
    out = harness.write_json(tmp_path / "a" / "b.json", {"rows": [1, 2]})
    got = json.loads(out.read_text())
    assert got["rows"] == [1, 2] and got["machine"]["cpus"] and isinstance(got["command"], str)
    got = json.loads(harness.write_json(tmp_path / "c.json", {"machine": "mine", "command": "x"}).read_text())
    assert got["machine"] == "mine" and got["command"] == "x"


def test_engine_path_defaults_inside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert harness.DEFAULT_ENGINE == "engines/smollm2-135m-instruct" and not Path(harness.DEFAULT_ENGINE).is_absolute()
    assert harness.engine_path("tools") == ROOT / "tools"  # a folder of the repository, from another working directory
    (tmp_path / "tools").mkdir()
    assert harness.engine_path("tools") == Path("tools")  # one here wins
    assert harness.engine_path("/no/such/engine") == Path("/no/such/engine")
    assert harness.engine_path("no-such-engine") == Path("no-such-engine")  # the runtime says it is missing


def test_random_prompt_is_seeded_and_avoids_special_tokens():
    a, b = harness.random_prompt(50000, 2, 16), harness.random_prompt(50000, 2, 16)
    assert a.shape == (2, 16) and a.dtype == np.int64 and np.array_equal(a, b)
    assert a.min() >= 100 and a.max() < 40000
    assert not np.array_equal(a, harness.random_prompt(50000, 2, 16, seed=1))


def test_decode_series_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"variant": v, "context": c, "batch": b, "decode_tok_s": float(c + b), "ttft_s": 1.0}
            for v in ("steerc", "genai") for c in (512, 128) for b in (1, 4)]
    assert harness.decode_series(rows, 1) == {"steerc": [(128, 129.0), (512, 513.0)], "genai": [(128, 129.0), (512, 513.0)]}
    out = harness.plot_decode({"rows": rows}, tmp_path / "p" / "plot.png", labels={"steerc": "steerc fp32"})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="batch 2"):
        harness.plot_decode({"rows": rows}, tmp_path / "none.png", batch=2)


def test_bench_decode_reports_a_recorded_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "decode.png"
    bench_decode.main(["--from-json", str(ROOT / "docs" / "bench" / "decode-peers.json"), "--plot", str(png), "--label", "steerc=steerc fp32"])
    text = capsys.readouterr().out
    assert "| 512 | 1 | 42.4 |" in text  # the recorded table (steerc fp32 at 512 tokens, docs/BENCHMARKS.md)
    assert "int4 / genai-int4 decode" in text and png.is_file()


def test_bench_decode_pairs():
    names = ["steerc", "int4", "llama.cpp", "genai"]
    assert bench_decode.default_pairs(names, ["int4"]) == [("steerc", "genai"), ("steerc", "llama.cpp"), ("int4", "genai"), ("int4", "llama.cpp"),
                                                           ("int4", "steerc")]
    rows = [{"variant": "a", "context": 8, "batch": 1, "decode_tok_s": 20.0, "ttft_s": 1.0},
            {"variant": "b", "context": 8, "batch": 1, "decode_tok_s": 10.0, "ttft_s": 2.0}]
    assert bench_decode.pair_ratios(rows, [("a", "b"), ("a", "c")]) == [{"a": "a", "b": "b", "context": 8, "batch": 1, "decode": 2.0, "ttft": 2.0}]
