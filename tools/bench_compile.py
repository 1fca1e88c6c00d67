"""Compile benchmark: wall time, peak memory and engine size of one ``steerc compile``.

Runs ``python -m steerc.cli compile MODEL -o ENGINE --force [ARGS...]`` as a child process and
polls its process tree (the compile and the analysis export it may fork) every ``--interval``
seconds from ``/proc``: the peak of the summed PSS (memory the tree really holds; a forked child's
shared pages are counted once) and of the compile process's RSS. The peak is placed in a stage
with the manifest's per-stage seconds. The fp32 weight bytes (parameters from the config x 4,
:mod:`steerc.build.memory_estimate`) give the ratio the memory preflight is calibrated on.

    python tools/bench_compile.py models-random/llama-3.2-1b -o engines/llama-1b --out docs/bench/compile-llama-1b.json [-- --weights int4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _rollup(pid: int) -> dict[str, int]:
    """Rss and Pss of ``pid`` in bytes (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def _stage_at(seconds: float, stages: dict) -> str | None:
    """The stage running ``seconds`` after the start of the compile's first stage."""
    t = 0.0
    for name, took in stages.items():
        if not isinstance(took, (int, float)):
            continue
        t += took
        if seconds <= t:
            return name
    return None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def measure(model: str, engine: Path, extra: list[str], interval: float) -> dict:
    from transformers import AutoConfig

    from steerc.build.memory_estimate import parameter_count

    parameters = parameter_count(AutoConfig.from_pretrained(model))
    cmd = [sys.executable, "-m", "steerc.cli", "compile", model, "-o", str(engine), "--force", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_pss, peak_rss, peak_at, samples = 0, 0, 0.0, []
    while proc.poll() is None:
        now = time.perf_counter() - start
        rolls = [_rollup(p) for p in _tree(proc.pid)]
        pss = sum(r.get("Pss", 0) for r in rolls)
        rss = rolls[0].get("Rss", 0) if rolls else 0
        samples.append((round(now, 2), round(pss / GIB, 3)))
        if pss > peak_pss:
            peak_pss, peak_at = pss, now
        peak_rss = max(peak_rss, rss)
        time.sleep(interval)
    wall = time.perf_counter() - start
    output = proc.stdout.read()
    result = {"model": model, "engine": str(engine), "command": " ".join(["python -m steerc.cli compile", model, "-o", str(engine), "--force", *extra]),
              "returncode": proc.returncode, "wall_s": round(wall, 1), "parameters": parameters, "fp32_weights_gib": round(4 * parameters / GIB, 3),
              "peak_pss_gib": round(peak_pss / GIB, 3), "peak_rss_main_gib": round(peak_rss / GIB, 3),
              "peak_over_fp32_weights": round(peak_pss / (4 * parameters), 2), "peak_at_s": round(peak_at, 1)}
    if proc.returncode != 0:
        result["output_tail"] = output[-3000:]
        return result
    manifest = json.loads((engine / "steerc.json").read_text())
    stages = manifest.get("compile_seconds", {})
    result.update({"engine_mib": round(folder_bytes(engine) / (1 << 20), 1), "stages_s": stages,
                   "peak_stage": _stage_at(peak_at - (wall - sum(v for v in stages.values() if isinstance(v, (int, float)))), stages),
                   "weights": manifest.get("weights"), "verify": manifest.get("verify"), "samples": samples[:: max(1, len(samples) // 400)]})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="HF folder to compile")
    parser.add_argument("-o", "--engine", required=True, help="engine folder (replaced)")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # more `steerc compile` arguments
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    result = measure(args.model, Path(args.engine), extra, args.interval)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k not in ("samples", "verify", "stages_s", "weights")}
    print(json.dumps(summary, indent=1))
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
