"""Load test of `steerc serve` on loopback: throughput and time to first token for N concurrent
clients, with and without context reuse, all modes measured in one run.

    python tools/bench_serve.py [ENGINE] [--clients 1,4] [--requests 16] [--max-seconds 120] [--out docs/bench/serve.json]
    python tools/bench_serve.py --url http://127.0.0.1:8000 --api-key KEY ...   # against a running server
    python tools/bench_serve.py ENGINE --servers batched unbatched ...           # server configurations in one run

Servers (``--servers``; each is started in turn and runs every mode and client count):
  batched    continuous batching, the default flags (--max-concurrency 8 --max-batch 8, prefix cache on)
  no-prefix-cache  batched, with the plain prompts' prefix cache off (--prefix-cache-mb 0): every
             plain request prefills its whole prompt
  unbatched  one generation decoding at a time, two requests worked on at once (--max-concurrency 2
             --max-batch 1): the server before continuous batching

Modes (each request asks one question about the same ~180-token passage, streamed, greedy):
  plain        the passage inside the chat message, no steering: a full prompt prefill per request
               (with the prefix cache on, the passage's KV is reused and the question prefilled)
  steer-fresh  LLMSteer with the passage inline, made unique per request: every request prepares
               the context (two importance prefills), i.e. LLMSteer without reuse
  steer-reuse  LLMSteer on a context registered once (POST /v1/contexts): only the question is prefilled

Each client sends its next request when the previous one ends; a mode stops after --requests
requests or --max-seconds, whichever comes first. TTFT is measured by the client: request sent
to first streamed token. Ratios are against `plain` in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from harness import DEFAULT_ENGINE, ROOT, start_server, write_json

QUESTIONS = ["Who won Super Bowl 50?", "Where was Super Bowl 50 played?", "Which team represented the NFC?", "What was the final score?",
             "When was the game played?", "Which anniversary did the league emphasise?", "Which conference did Denver represent?",
             "What tradition was suspended?"]
MODES = ("plain", "steer-fresh", "steer-reuse")
SERVERS = {"batched": (8, ["--max-batch", "8"]), "no-prefix-cache": (8, ["--max-batch", "8", "--prefix-cache-mb", "0"]),
           "unbatched": (2, ["--max-batch", "1", "--prefix-cache-mb", "0"])}  # name: (--max-concurrency, other flags)
EXAMPLE_CONTEXT = ROOT / "examples" / "super_bowl_50.txt"


def _body(mode: str, i: int, context: str, context_id: str | None, max_tokens: int) -> dict:
    question = QUESTIONS[i % len(QUESTIONS)]
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if mode == "plain":
        return {**body, "messages": [{"role": "user", "content": f"{context}\n\nQuestion: {question}"}]}
    steer = {"context_id": context_id} if mode == "steer-reuse" else {"context": f"{context} [request {i}]"}
    return {**body, "messages": [{"role": "user", "content": question}], "steer": steer}


def one_request(client: httpx.Client, body: dict) -> dict:
    start = time.perf_counter()
    first, tokens, prefill, cached = None, 0, None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("choices") and event["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
                cached = (event["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            if "steer" in event:
                prefill = event["steer"]["context_prefill_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens, "context_prefill_tokens": prefill, "cached_tokens": cached}


def run_mode(url: str, headers: dict, mode: str, clients: int, requests: int, max_seconds: float, context: str, context_id: str | None,
             max_tokens: int, offset: int) -> dict:
    lock, counter, results = threading.Lock(), [0], []
    deadline = time.perf_counter() + max_seconds

    def client_loop():
        with httpx.Client(base_url=url, headers=headers, timeout=3600) as client:
            while time.perf_counter() < deadline:
                with lock:
                    if counter[0] >= requests:
                        return
                    i = counter[0]
                    counter[0] += 1
                result = one_request(client, _body(mode, offset + i, context, context_id, max_tokens))
                with lock:
                    results.append(result)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client_loop) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results)
    q = statistics.quantiles(ttfts, n=20, method="inclusive") if len(ttfts) >= 2 else ttfts * 19
    return {"mode": mode, "clients": clients, "requests": len(results), "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2),
            "ttft_p50_s": round(statistics.median(ttfts), 3), "ttft_p95_s": round(q[18], 3),
            "latency_p50_s": round(statistics.median(r["latency"] for r in results), 3),
            "mean_completion_tokens": round(statistics.mean(r["tokens"] for r in results), 1),
            "prompt_cached_tokens_per_request": round(statistics.mean(r["cached_tokens"] for r in results), 1),
            "context_prefill_tokens_per_request": None if mode == "plain" else round(statistics.mean(r["context_prefill_tokens"] or 0 for r in results), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine", nargs="?", default=DEFAULT_ENGINE, help=f"engine folder: a server is started for the run (default: {DEFAULT_ENGINE}; ignored with --url)")
    p.add_argument("--url", help="a running server instead")
    p.add_argument("--api-key", default=os.environ.get("STEERC_API_KEY"))
    p.add_argument("--clients", default="1,4", help="comma-separated concurrent client counts")
    p.add_argument("--requests", type=int, default=16, help="requests per mode and client count")
    p.add_argument("--max-seconds", type=float, default=120, help="time bound per mode and client count")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--servers", nargs="+", default=["batched"], choices=sorted(SERVERS), help="server configurations to start in turn (default: batched)")
    p.add_argument("--concurrency", type=int, default=None, help="override the started servers' --max-concurrency")
    p.add_argument("--threads", type=int, default=None, help="the started server's --threads")
    p.add_argument("--kv-store", default="memory", help="the started server's --kv-store (e.g. redis://127.0.0.1:6379/0)")
    p.add_argument("--memory-store-mb", type=int, default=1024, help="the started server's memory tier; 0 makes every reuse read the backing store")
    p.add_argument("--context", default=str(EXAMPLE_CONTEXT))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args()
    context = Path(args.context).read_text().strip()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    rows = []
    for server in (["url"] if args.url else args.servers):
        proc = None
        if args.url:
            url = args.url.rstrip("/")
        else:
            concurrency, extra = SERVERS[server]
            proc, url = start_server(args.engine, args.concurrency or concurrency, args.threads, None, args.kv_store, args.memory_store_mb, extra=extra)
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=3600) as c:
                context_id = c.post("/v1/contexts", json={"context": context}).raise_for_status().json()["id"]
                for mode in args.modes.split(","):  # warm-up: sessions, allocator, the analysis graph
                    one_request(c, _body(mode, 10_000, context, context_id, args.max_tokens))
            offset = 0
            for clients in (int(v) for v in args.clients.split(",")):
                for mode in args.modes.split(","):
                    row = run_mode(url, headers, mode, clients, args.requests, args.max_seconds, context, context_id, args.max_tokens, offset)
                    row["server"] = server
                    offset += row["requests"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    _ratios(rows)
    print("\n| server | clients | mode | requests | req/s | tokens/s | TTFT p50 | TTFT p95 | throughput vs plain | TTFT p50 vs plain | tokens/s vs 1 client | context prefill tokens/request |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['mode']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['ttft_p50_s']:.3f} s | "
              f"{r['ttft_p95_s']:.3f} s | {r.get('throughput_vs_plain', '')}x | {r.get('ttft_p50_vs_plain', '')}x | {r.get('tokens_vs_one_client', '')}x | "
              f"{r['context_prefill_tokens_per_request'] if r['context_prefill_tokens_per_request'] is not None else 'n/a'} |")
    if args.out:
        meta = {"engine": None if args.url else args.engine, "url": args.url, "clients": args.clients, "requests": args.requests, "max_seconds": args.max_seconds,
                "max_tokens": args.max_tokens, "servers": {s: {"max_concurrency": args.concurrency or SERVERS[s][0], "flags": SERVERS[s][1]} for s in args.servers},
                "kv_store": args.kv_store.split("@")[-1], "memory_store_mb": args.memory_store_mb, "threads": args.threads, "cpu_count": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d")}
        write_json(args.out, {"run": meta, "rows": rows}, indent=1)


def _ratios(rows: list[dict]) -> None:
    """Per server: each row against ``plain`` at the same client count, and against the same mode with one client."""
    for r in rows:
        base = next((b for b in rows if b["server"] == r["server"] and b["clients"] == r["clients"] and b["mode"] == "plain"), None)
        if base is not None:
            r["throughput_vs_plain"] = round(r["requests_per_s"] / base["requests_per_s"], 2)
            r["ttft_p50_vs_plain"] = round(r["ttft_p50_s"] / base["ttft_p50_s"], 2)
        one = next((b for b in rows if b["server"] == r["server"] and b["clients"] == 1 and b["mode"] == r["mode"]), None)
        if one is not None:
            r["tokens_vs_one_client"] = round(r["tokens_per_s"] / one["tokens_per_s"], 2)


if __name__ == "__main__":
    main()
