"""Memory benchmark: peak RSS of load + context preparation + one answer, per way the step and
analysis sessions share memory (``Engine.load``'s ``share``: ``off``, ``arena``, ``weights``).

Each variant runs in a fresh subprocess: load the engine, prepare a context of ``--context``
tokens (SQuAD dev passages) with LLMSteer (the analysis graph's importance prefills), answer
one of its questions (``--new-tokens`` greedy tokens), then time decode steps (batch 1) over
the prepared context. RSS is read after each stage; peak is ``ru_maxrss``, PSS (each page
divided among the mappings that share it) from ``/proc/self/smaps_rollup`` at the end. Decode
time is the median of ``--steps`` steps, relative to the first variant. Prints a markdown
table, writes JSON.

    python tools/bench_memory.py [ENGINE_DIR] [--variants off arena weights] [--context 1000] [--out docs/bench/memory.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import BENCH_DIR, add_engine_args, engine_path, interleave, load_engine, medians, squad_context, write_json

log = logging.getLogger("bench_memory")


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def _proc_kib(path: str, field: str) -> float:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise KeyError(field)


def rss_mib() -> float:
    return _mib(_proc_kib("/proc/self/status", "VmRSS"))


def peak_mib() -> float:
    return _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def run_variant(engine_dir: str, share: str, context: str, query: str, new_tokens: int) -> dict:
    """One variant in this process (the child): memory after each stage."""
    from steerc.runtime import SamplingParams
    from steerc.steering import SteerConfig, Steerer
    from steerc.stores import MemoryStore

    out = {"share": share, "start_mib": rss_mib()}
    start = time.perf_counter()
    engine = load_engine(engine_dir, share=share)
    out.update(effective_share=engine.share, load_s=round(time.perf_counter() - start, 2), after_load_mib=rss_mib())
    log.info("[%s] loaded in %.1f s (share %s), RSS %.0f MiB", share, out["load_s"], engine.share, out["after_load_mib"])
    steerer = Steerer(engine, SteerConfig(method="llmsteer"), MemoryStore())
    start = time.perf_counter()
    prepared, _ = steerer.prepare(context)
    out.update(prepare_s=round(time.perf_counter() - start, 2), after_prepare_mib=rss_mib(), context_tokens=len(prepared.context_ids))
    log.info("[%s] prepared %d context tokens in %.1f s, RSS %.0f MiB", share, out["context_tokens"], out["prepare_s"], out["after_prepare_mib"])
    answer = steerer.answer(context, query, max_new_tokens=new_tokens, sampling=SamplingParams())
    out.update(answer=answer.text, answer_tokens=answer.token_ids, cache=answer.cache, after_answer_mib=rss_mib())
    out.update(end_mib=rss_mib(), pss_mib=_mib(_proc_kib("/proc/self/smaps_rollup", "Pss")), peak_mib=peak_mib())
    log.info("[%s] answered %r, RSS %.0f MiB, peak %.0f MiB", share, answer.text[:40], out["after_answer_mib"], out["peak_mib"])
    return out


def decode_steps(engine_dir: str, variants: list[str], context: str, steps: int) -> dict[str, float]:
    """Median ms of one batch-1 decode step over ``context`` per variant, interleaved step by step."""
    from steerc.runtime import prefill

    engines = {share: load_engine(engine_dir, share=share) for share in variants}
    first = engines[variants[0]]
    ids = np.array([first.tokenizer(context, add_special_tokens=False)["input_ids"]], np.int64)
    _, kv = prefill(first, ids, np.ones(ids.shape, np.int64), first.new_cache(1), chunk=512)
    g, P = first.geometry, kv.length
    feed = (np.array([[1]], np.int64), np.array([[P]], np.int64), np.ones((1, P + 1), np.int64), kv,
            np.zeros((1, g.num_layers, g.num_heads, P + 1), np.float32))
    def step(engine) -> float:
        start = time.perf_counter()
        engine.forward(*feed)  # the cache is not extended: every step sees P keys
        return time.perf_counter() - start

    log.info("decode timing: %d steps per variant, interleaved step by step", steps)
    runs = {share: (lambda e=engine: step(e)) for share, engine in engines.items()}
    interleave(runs, 1)  # two warm-up steps each (interleave's own, then this repeat), not timed
    return {share: round(1000 * t, 2) for share, t in medians(interleave(runs, steps, warmup=False)).items()}


def table(engine_dir: str, results: list[dict]) -> str:
    base = results[0]
    lines = [f"engine `{engine_dir}`, {base['context_tokens']} context tokens (LLMSteer), {len(base['answer_tokens'])} answer tokens",
             "",
             "| share | peak RSS (MiB) | vs first | RSS after load / prepare / answer (MiB) | PSS at end (MiB) | decode step (ms, interleaved) | decode vs first | same tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        r["decode_vs_first"] = r["decode_step_ms"] / base["decode_step_ms"]
        share = r["share"] if r["effective_share"] == r["share"] else f"{r['share']} (→ {r['effective_share']})"
        lines.append(f"| {share} | {r['peak_mib']:.0f} | {r['peak_mib'] - base['peak_mib']:+.0f} | {r['after_load_mib']:.0f} / {r['after_prepare_mib']:.0f} / "
                     f"{r['after_answer_mib']:.0f} | {r['pss_mib']:.0f} | {r['decode_step_ms']:.1f} | {r['decode_vs_first']:.2f}x | "
                     f"{'yes' if r['answer_tokens'] == base['answer_tokens'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_args(parser, threads=False, backend=False)
    parser.add_argument("--variants", nargs="+", default=["off", "arena", "weights"])
    parser.add_argument("--context", type=int, default=1000, help="context tokens")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed decode steps per variant")
    parser.add_argument("--out", default=str(BENCH_DIR / "memory.json"))
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)  # SHARE|decode REQUEST_JSON
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if args.child:
        request = json.loads(Path(args.child[1]).read_text())
        if args.child[0] == "decode":
            print(json.dumps(decode_steps(args.engine, args.variants, request["context"], args.steps)))
        else:
            print(json.dumps(run_variant(args.engine, args.child[0], request["context"], request["query"], args.new_tokens)))
        return
    from transformers import AutoTokenizer

    args.engine = str(engine_path(args.engine))
    context, query, _ = squad_context(AutoTokenizer.from_pretrained(args.engine), args.context)  # here: the children hold no SQuAD
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"context": context, "query": query}))
        for i, share in enumerate([*args.variants, "decode"]):
            log.info("%d/%d: %s (fresh process)", i + 1, len(args.variants) + 1, f"share {share}" if share != "decode" else "decode timing")
            cmd = [sys.executable, __file__, args.engine, "--child", share, str(request), "--variants", *args.variants,
                   "--new-tokens", str(args.new_tokens), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    decode = results.pop()
    for r in results:
        r["decode_step_ms"] = decode[r["share"]]
    report = table(args.engine, results)
    print(report)
    out = write_json(args.out, {"engine": args.engine, "context": args.context, "new_tokens": args.new_tokens, "steps": args.steps, "results": results,
                                "table": report}, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
