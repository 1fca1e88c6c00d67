"""The benchmarks' shared harness: the setup every ``tools/bench_*.py`` needs, written once.

* **engines**: :func:`add_engine_args` (the engine folder, by default
  ``engines/smollm2-135m-instruct`` inside this repository; ``--threads``; ``--backend``) and
  :func:`load_engine` (``steerc.runtime.Engine.load``);
* **inputs**: :func:`random_prompt` (random token ids) and :func:`squad_context` (a context of
  exactly N tokens cut from consecutive SQuAD dev passages, with a question of the first one);
* **timing**: :func:`interleave` runs every variant once per repeat, in the same order each time
  (A B C A B C ...), so the machine's noise hits all alike, and :func:`medians` reduces the
  samples; :func:`time_generate` times one greedy generation (time to first token, decode);
* **peers** of the decode benchmark: HF transformers (:func:`setup_hf`), onnxruntime-genai
  (:func:`setup_genai`) and llama.cpp (:func:`setup_llama_cpp`), each returning a runner or,
  when it is not installed or cannot build its model, a note saying why (never an error);
* **the server**: :func:`start_server` runs ``steerc serve`` on a free loopback port;
* **output**: :func:`write_json` (the result plus the machine and the command line) and
  :func:`plot_decode` (decode tokens/s against context length, one line per variant).

Only the standard library is imported here at module level: numpy, steerc and the peers are
imported by the functions that need them, so a benchmark can report a missing package itself.
The benchmarks use steerc's public API (``steerc``, ``steerc.runtime``, ``steerc.steering``,
``steerc.stores``) wherever it has what they measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "docs" / "bench"
DEFAULT_ENGINE = "engines/smollm2-135m-instruct"
PEERS = ("genai", "genai-int4", "llama.cpp")
LLAMA_CPP_INSTALL = "pip install 'steerc[bench]', i.e. llama-cpp-python==0.3.36, which builds llama.cpp from source: C/C++ compiler + cmake"
GENAI_INSTALL = "pip install onnxruntime-genai>=0.18"

__all__ = [
    "BENCH_DIR", "DEFAULT_ENGINE", "PEERS", "ROOT", "add_engine_args", "engine_path", "interleave", "load_engine", "machine", "medians",
    "package_versions", "plot_decode", "random_prompt", "setup_genai", "setup_hf", "setup_llama_cpp", "squad_context", "start_server",
    "time_generate", "write_json",
]  # fmt: skip

T = TypeVar("T")
Runner = Callable[[Any], tuple[float, float, int]]


# --- engines --------------------------------------------------------------------------------------


def engine_path(text: str | os.PathLike) -> Path:
    """``text`` as given when it exists (or is absolute); else, when it names a folder inside this
    repository (``engines/...``), that folder, so the default works from any working directory."""
    path = Path(text)
    if path.is_absolute() or path.exists() or not (ROOT / path).exists():
        return path
    return ROOT / path


def add_engine_args(parser: argparse.ArgumentParser, *, threads: bool = True, backend: bool = True,
                    threads_help: str = "ONNX Runtime intra-op threads (default: all cores)") -> None:
    """The engine folder (positional, optional: ``engines/smollm2-135m-instruct`` by default) and,
    unless turned off, ``--threads`` and ``--backend``."""
    parser.add_argument("engine", nargs="?", default=DEFAULT_ENGINE, help=f"engine folder (default: {DEFAULT_ENGINE}, inside the repository)")
    if threads:
        parser.add_argument("--threads", type=int, default=None, help=threads_help)
    if backend:
        parser.add_argument("--backend", default=None, help="the runtime backend the engine runs on (default: the runtime's, ONNX Runtime)")


def load_engine(folder: str | os.PathLike, threads: int | None = None, backend: str | None = None, **options):
    """``steerc.runtime.Engine.load`` on :func:`engine_path` (``backend`` passed only when given,
    so the runtime's default and its names stay the runtime's)."""
    from steerc.runtime import Engine

    if backend:
        options["backend"] = backend
    return Engine.load(engine_path(folder), threads=threads, **options)


# --- inputs ---------------------------------------------------------------------------------------


def random_prompt(vocab: int, batch: int, length: int, seed: int = 0):
    """``[batch, length]`` int64 token ids drawn from ``[100, min(vocab, 40000))`` (no special tokens)."""
    import numpy as np

    return np.random.default_rng(seed).integers(100, min(vocab, 40000), (batch, length), dtype=np.int64)


def squad_context(tokenizer, length: int) -> tuple[str, str, str]:
    """(a context of exactly ``length`` tokens, a question, its gold answer): consecutive SQuAD dev
    passages (the dataset folder of ``steerc eval``: ``$STEERC_DATA`` or ``../shared/data``) cut at
    the ``length``-th token; the question is the first one of the first passage."""
    from steerc.eval.data import load_squad

    examples = load_squad()
    passages = [context for _, context in dict.fromkeys((ex.group, ex.context) for ex in examples)]  # one per paragraph, in file order
    question = examples[0]
    text = ""
    for passage in passages:
        text += passage + "\n\n"
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) >= length:
            return text[: enc["offset_mapping"][length - 1][1]], question.question, question.answers[0]
    raise SystemExit(f"not enough SQuAD text for {length} tokens")


# --- timing ---------------------------------------------------------------------------------------


def interleave(runs: Mapping[str, Callable[[], T]], repeats: int, warmup: bool = True) -> dict[str, list[T]]:
    """Each run called once per repeat, in the order given (A B C A B C ...), so load from other
    processes hits every variant alike; with ``warmup``, each is first called once, unrecorded.
    Returns every run's results in call order."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup:
        for run in runs.values():
            run()
    samples: dict[str, list[T]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def medians(samples: Mapping[str, Sequence], fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The median of every name's samples; with ``fields``, the samples are tuples and the result
    is ``{name: {field: median of that item}}`` (items past the fields are ignored)."""
    if fields is None:
        return {name: statistics.median(values) for name, values in samples.items()}
    return {name: {f: statistics.median(v[i] for v in values) for i, f in enumerate(fields)} for name, values in samples.items()}


def time_generate(engine, ids, new_tokens: int, steering=None) -> tuple[float, float, int]:
    """(time to first token, seconds from the first to the last token, tokens) of one greedy
    generation of exactly ``new_tokens`` tokens after ``ids`` (stop tokens ignored)."""
    from steerc.runtime import generate

    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in generate(engine, ids, max_new_tokens=new_tokens, steering=steering, stop_token_ids=set())]
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


# --- peers ----------------------------------------------------------------------------------------


def setup_hf(spec: str, new_tokens: int, attn: str = "eager") -> Runner:
    """HF transformers ``generate`` (fp32, ``attn`` attention) on the engine's source model."""
    from steerc.models import load_model

    model = load_model(spec, "fp32", attn).model
    return lambda ids: _run_hf(model, ids, new_tokens)


def _run_hf(model, ids, new: int) -> tuple[float, float, int]:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, logits_processor=LogitsProcessorList([Stamp()]), pad_token_id=0,
        )
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def _build_genai(hf_folder: Path, out: Path, precision: str) -> Path | None:
    """A model onnxruntime-genai's own builder made from ``hf_folder`` (cached in ``out``)."""
    if (out / "genai_config.json").is_file():
        return out
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu",
           "-c", str(out.parent / "genai-cache")]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        print(f"onnxruntime-genai builder ({precision}) failed: {result.stderr[-2000:]}", file=sys.stderr)
        return None
    return out


def _run_genai(og_model, ids, new: int) -> tuple[float, float, int]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(og_model)
    params.set_search_options(do_sample=False, max_length=ids.shape[1] + new, min_length=ids.shape[1] + new, batch_size=ids.shape[0])
    generator = og.Generator(og_model, params)
    start = time.perf_counter()
    generator.append_tokens(ids)
    stamps = []
    while not generator.is_done():
        generator.generate_next_token()
        stamps.append(time.perf_counter())
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def setup_genai(spec: str, workdir: Path, precision: str, new_tokens: int) -> tuple[Runner | None, str | None]:
    """(runner, note): onnxruntime-genai on a model its builder made (``-p precision -e cpu``) from
    the HF folder of ``spec``, cached under ``workdir``; the runner is None and the note says why
    when the peer cannot run."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None, f"onnxruntime-genai is not installed ({GENAI_INSTALL})"
    from steerc.models import checkpoint_folder

    folder = _build_genai(checkpoint_folder(spec)[0], Path(workdir) / f"genai-{precision}-cpu", precision)
    if folder is None:
        return None, f"the onnxruntime-genai model builder failed for -p {precision} (see stderr)"
    og_model = og.Model(str(folder))
    return (lambda ids: _run_genai(og_model, ids, new_tokens)), None


def _run_llama_cpp(llm, ids, new: int) -> tuple[float, float, int]:
    """Greedy decode of exactly ``new`` tokens after ``ids`` (batch 1): the prompt in ``n_batch``
    chunks, then one token per step, argmax over the last logits (numpy, as the steerc runtime
    does). The KV cache is cleared first (``reset`` + ``eval`` drops positions from 0 on)."""
    import numpy as np

    if ids.shape[0] != 1:
        raise ValueError("the llama.cpp peer runs batch 1 only")
    n_vocab = llm.n_vocab()

    def next_token():
        return int(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).argmax())

    llm.reset()
    start = time.perf_counter()
    llm.eval(ids[0].tolist())
    token = next_token()
    stamps = [time.perf_counter()]
    for _ in range(new - 1):
        llm.eval([token])
        token = next_token()
        stamps.append(time.perf_counter())
    return stamps[0] - start, stamps[-1] - stamps[0], len(stamps)


def setup_llama_cpp(gguf: str | None, n_ctx: int, threads: int, new_tokens: int, flash_attn: bool = False) -> tuple[Runner | None, str | None]:
    """(runner, note), as :func:`setup_genai`: llama-cpp-python on the GGUF file itself (batch 1)."""
    try:
        import llama_cpp
    except ImportError:
        return None, f"llama-cpp-python is not installed ({LLAMA_CPP_INSTALL})"
    if not gguf or not Path(gguf).is_file():
        return None, f"no GGUF file for llama.cpp (the engine's source is not a GGUF, or {gguf} is missing): pass --gguf"
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                          logits_all=False, flash_attn=flash_attn, verbose=False)
    return (lambda ids: _run_llama_cpp(llm, ids, new_tokens)), None


def package_versions(*dists: str) -> dict[str, str | None]:
    """The installed version of each distribution (None when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in dists or ("onnxruntime", "onnxruntime-genai", "llama-cpp-python", "torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# --- the server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine: str, concurrency: int, threads: int | None, log: Path | None = None, kv_store: str = "memory", memory_mb: int = 1024,
                 extra: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    """``steerc serve ENGINE`` on a free loopback port (no API key), output to ``log`` (default: a
    file in the temporary folder); returns the process and its URL once ``/health`` answers."""
    import httpx

    port = free_port()
    log = Path(log) if log is not None else Path(tempfile.gettempdir()) / f"steerc-bench-serve-{port}.log"
    cmd = [sys.executable, "-m", "steerc.cli", "serve", str(engine_path(engine)), "--port", str(port), "--kv-store", kv_store,
           "--memory-store-mb", str(memory_mb), "--max-concurrency", str(concurrency), "--max-queue", "1024", "--log-level", "warning",
           "--request-timeout", "3600", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "STEERC_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"steerc serve exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("steerc serve did not start in 120 s")


# --- output ---------------------------------------------------------------------------------------


def machine() -> dict:
    """Where the run happened: platform, processor, cores and the load average now."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_json(path: str | os.PathLike, result: dict, indent: int = 2) -> Path:
    """``result`` as JSON at ``path`` (folders created), with ``machine`` (:func:`machine`) and
    ``command`` (this process's command line) added when it has none."""
    result = {**result}
    result.setdefault("machine", machine())
    result.setdefault("command", " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    return path


def decode_series(rows: list[dict], batch: int) -> dict[str, list[tuple[int, float]]]:
    """variant -> [(context, decode tok/s)] sorted by context, for one batch size, in the run's order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["batch"] == batch:
            out.setdefault(r["variant"], []).append((r["context"], r["decode_tok_s"]))
    return {k: sorted(v) for k, v in out.items()}


def plot_decode(result: dict, out: str | os.PathLike, batch: int = 1, title: str | None = None, labels: Mapping[str, str] | None = None) -> Path:
    """Decode tokens/s against context length (log 2 axis), one line per variant, from the rows of
    a decode benchmark's JSON (``variant``, ``context``, ``batch``, ``decode_tok_s``); needs
    matplotlib (``pip install 'steerc[bench]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = decode_series(result["rows"], batch)
    if not lines:
        raise SystemExit(f"no rows at batch {batch}")
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    markers = "os^vD<>ph*"
    for i, (name, points) in enumerate(lines.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=(labels or {}).get(name, name))
    contexts = sorted({c for points in lines.values() for c, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"decode tokens/s (batch {batch})")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or f"Decode speed vs context, {result.get('new_tokens', '?')} new tokens, median of {result.get('repeats', '?')}")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
