"""Where an engine's decode step spends its time: ONNX Runtime's profiler, aggregated per op type.

    PYTHONPATH=. python tools/profile_step.py ENGINE [--context 512] [--steps 16] [--threads 2] [--out JSON]

Prefills a random prompt of ``--context`` tokens, decodes ``--warmup + --steps`` tokens greedily
through the runtime (``steerc.runtime.generate``, as ``tools/bench_decode.py`` does) with the
step session's profiler on (``$STEERC_ORT_PROFILE``), and sums the node events of the last
``--steps`` runs per op type: µs per step, nodes per step, share of the node time. Also per step:
the session's ``model_run`` time, the node time, and the wall time between tokens (the Python
loop's share is wall minus ``model_run``). Profiling adds a little per node; compare engines
with the same tool, and speed with ``tools/bench_decode.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from harness import add_engine_args, load_engine, random_prompt, write_json


def aggregate(events: list[dict], steps: int, top: int = 10) -> dict:
    """The last ``steps`` ``model_run`` windows of a profile's ``events``: per op type
    ``{"us": µs per step, "nodes": per step}``, the per-step model_run and node totals, and the
    ``top`` slowest nodes (µs per step)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) < steps:
        raise ValueError(f"the profile has {len(runs)} runs, fewer than the {steps} steps asked for")
    runs = runs[-steps:]
    ops: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "nodes": 0.0})
    per_node: dict[str, float] = defaultdict(float)
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    for e in nodes:
        if any(start <= e["ts"] <= end for start, end in runs):
            op = e.get("args", {}).get("op_name", "?")
            ops[op]["us"] += e["dur"] / steps
            ops[op]["nodes"] += 1 / steps
            per_node[f"{op} {e['name'][:-len('_kernel_time')]}"] += e["dur"] / steps
    node_us = sum(v["us"] for v in ops.values())
    return {"ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["us"])), "node_us": node_us,
            "model_run_us": sum(end - start for start, end in runs) / steps,
            "slowest": dict(sorted(per_node.items(), key=lambda kv: -kv[1])[:top])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(parser)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the aggregate as JSON")
    args = parser.parse_args()
    from steerc.runtime import generate

    with tempfile.TemporaryDirectory(prefix="steerc-profile-") as tmp:
        os.environ["STEERC_ORT_PROFILE"] = str(Path(tmp) / "step")
        engine = load_engine(args.engine, args.threads, args.backend)
        del os.environ["STEERC_ORT_PROFILE"]
        ids = random_prompt(engine.geometry.vocab_size, 1, args.context)
        stamps = [time.perf_counter() for _ in generate(engine, ids, max_new_tokens=args.warmup + args.steps + 1, stop_token_ids=set())]
        session = getattr(engine.session, "session", engine.session)  # an in-place engine's wrapper holds the ORT session
        events = json.loads(Path(session.end_profiling()).read_text())
    result = aggregate(events, args.steps)
    result["wall_us"] = (stamps[-1] - stamps[-1 - args.steps]) / args.steps * 1e6
    result.update(engine=str(args.engine), context=args.context, steps=args.steps, threads=args.threads)
    print(f"{args.engine} at {args.context} tokens: wall {result['wall_us'] / 1e3:.2f} ms/step, model_run {result['model_run_us'] / 1e3:.2f}, "
          f"nodes {result['node_us'] / 1e3:.2f}, nodes/step {sum(v['nodes'] for v in result['ops'].values()):.0f}")
    print("\n| op | nodes / step | µs / step | share of node time |\n|---|---|---|---|")
    for op, v in result["ops"].items():
        print(f"| {op} | {v['nodes']:.0f} | {v['us']:.0f} | {v['us'] / result['node_us']:.1%} |")
    print("\nslowest nodes (µs / step): " + ", ".join(f"{name} {us:.0f}" for name, us in result["slowest"].items()))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
