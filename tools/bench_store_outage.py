"""Latency of `steerc serve` through a Redis outage: one client, inline steered requests, before /
during / after redis-server is killed (and restarted, empty).

    python tools/bench_store_outage.py [ENGINE] [--requests 12] [--outage kill|pause] [--store-timeout 10] [--out docs/bench/store-outage.json]

Starts its own redis-server (on a free loopback port, no persistence) and a server on it with
``--memory-store-mb 0`` (every lookup goes to Redis). Each phase sends ``--requests`` requests,
one at a time; each is streamed, greedy, and asks a question about the example passage made
unique per request, so every request prepares its context (LLMSteer without reuse) and the
phases differ only in what the store costs. ``--outage kill``: redis-server is SIGKILLed
(connections refused); ``--outage pause``: ``CLIENT PAUSE`` (Redis accepts connections but
answers nothing, so each try costs the store timeout), over before the last phase. A failed request is counted, not retried. The
target: 0 failures, and during the outage p95 latency at most the prepare time plus the store
timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_serve import EXAMPLE_CONTEXT, QUESTIONS, one_request
from harness import DEFAULT_ENGINE, free_port, start_server, write_json

PHASES = ("before", "during", "after")


def start_redis(port: int, folder: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server") or sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def run_phase(url: str, phase: str, requests: int, context: str, max_tokens: int, offset: int) -> dict:
    latencies, failures = [], 0
    with httpx.Client(base_url=url, timeout=3600) as client:
        for i in range(requests):
            body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    "steer": {"method": "llmsteer", "context": f"{context} [request {offset + i}]"}}
            try:
                latencies.append(one_request(client, body)["latency"])
            except (RuntimeError, httpx.HTTPError) as exc:
                failures += 1
                print(f"{phase}: request {i} failed: {exc}", file=sys.stderr)
        ready = client.get("/ready").status_code
        errors = sum(float(line.split()[-1]) for line in client.get("/metrics").text.splitlines() if line.startswith("steerc_store_errors_total{"))
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) >= 2 else latencies * 19
    return {"phase": phase, "requests": requests, "failed": failures, "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_p95_s": round(q[18], 3) if latencies else None, "ready_after": ready, "store_errors_total": errors,
            "latencies_s": [round(x, 3) for x in latencies]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine", nargs="?", default=DEFAULT_ENGINE, help=f"engine folder (default: {DEFAULT_ENGINE})")
    p.add_argument("--requests", type=int, default=12, help="requests per phase")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--outage", choices=("kill", "pause"), default="kill", help="how Redis fails during the middle phase")
    p.add_argument("--store-timeout", type=float, default=10.0, help="the server's --store-timeout")
    p.add_argument("--threads", type=int, default=None, help="the server's --threads")
    p.add_argument("--context", default=str(EXAMPLE_CONTEXT))
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args()
    context = Path(args.context).read_text().strip()
    tmp = Path(tempfile.gettempdir())
    port = free_port()
    redis = start_redis(port, tmp)
    proc, url = start_server(args.engine, 1, args.threads, tmp / "bench_store_outage.log", f"redis://127.0.0.1:{port}/0", 0,
                             ("--store-timeout", str(args.store_timeout)))
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=3600) as c:  # warm-up: sessions, allocator, the analysis graph
            c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 2,
                                                 "steer": {"method": "llmsteer", "context": context + " [warm-up]"}}).raise_for_status()
        for n, phase in enumerate(PHASES):
            if phase == "during" and args.outage == "kill":
                redis.kill()
                redis.wait(10)
            elif phase == "during":
                import redis as redis_py

                pause_s = max(5.0, 1.5 * args.requests * rows[0]["latency_p50_s"])  # longer than the phase (CLIENT UNPAUSE would wait too)
                redis_py.Redis(port=port).execute_command("CLIENT", "PAUSE", str(int(pause_s * 1000)), "ALL")
                paused_until = time.monotonic() + pause_s
            elif phase == "after" and args.outage == "kill":
                redis = start_redis(port, tmp)
            elif phase == "after":
                time.sleep(max(0.0, paused_until - time.monotonic()) + 0.5)
            rows.append(run_phase(url, phase, args.requests, context, args.max_tokens, n * args.requests))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        redis.kill()
    print("\n| phase | requests | failed | latency p50 | latency p95 | /ready after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['requests']} | {r['failed']} | {r['latency_p50_s']} s | {r['latency_p95_s']} s | {r['ready_after']} |")
    if args.out:
        meta = {"engine": args.engine, "outage": args.outage, "requests": args.requests, "max_tokens": args.max_tokens, "store_timeout_s": args.store_timeout,
                "threads": args.threads, "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
        write_json(args.out, {"run": meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
