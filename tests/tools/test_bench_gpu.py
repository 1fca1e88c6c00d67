"""tools/bench_gpu.py's logic in its CPU smoke mode (--device cpu --tiny: a 2-layer model, AOTInductor's CPU path, ~30 s)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPLS = ("hf_eager", "hf_sdpa", "steerc_aoti", "steerc_aoti_steered")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_tiny_cpu_run_writes_the_report(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--device", "cpu", "--tiny", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "steerc/HF decode" in result.stdout and "wrote" in result.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["batch"] == 1 and _finite(report["bandwidth"]["measured_Bps"]) and report["bandwidth"]["measured_Bps"] > 0
    (model,) = report["models"]
    assert model["name"] == "tiny" and model["geometry"]["num_layers"] == 2
    for key in ("weight_bytes", "kv_bytes_per_step", "bytes_per_step", "roofline_step_s", "aoti_compile_s", "capture_s"):
        assert _finite(model[key]) and model[key] > 0, key
    for impl in IMPLS:
        res = model["results"][impl]
        assert all(_finite(res[k]) and res[k] > 0 for k in ("ttft_s", "decode_step_s", "decode_tok_s")), (impl, res)
        assert len(res["tokens"]) == report["new_tokens"]
        assert _finite(model["roofline"][impl]["fraction_of_measured_bw"])
    assert all(_finite(v) and v > 0 for v in model["ratios"].values()), model["ratios"]
    c = model["correctness"]
    # fp32 on the CPU: the steerc package reproduces the HF model exactly enough for greedy tokens
    assert c["tokens_equal_hf_sdpa"] is True and c["common_prefix_hf_sdpa"] == report["new_tokens"]
    assert _finite(c["prefill_last_logits_max_abs_diff"]) and c["prefill_last_logits_max_abs_diff"] < 1e-3


def test_missing_gpu_is_one_line_exit_2(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True)
    if probe.stdout.strip() == "True":
        import pytest

        pytest.skip("this machine has CUDA: the GPU run is the real benchmark (minutes)")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--out", str(tmp_path / "b.json")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot run" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b.json").exists()
