"""How similar are the attention maps of different layers? (the premise of Shared Attention)

Shared Attention (Liao & Vargas, arXiv 2407.12866) reuses one layer's attention probabilities
softmax(QK^T) in the following layers of a span, because in trained LLMs the attention
distributions of later layers are nearly identical. This tool measures that on our models,
to choose which contiguous layer groups could share.

Input: the first ``--passages`` SQuAD passages of the dev split (one per context group; the
first question of each), each wrapped as steerc prompts them (``PromptLayout``: the chat
template with LLMSteer's first instruction prefix when the tokenizer has one, else the plain
``...Question: ...\\nAnswer:`` prompt), the context truncated so the whole prompt has at most
``--max-tokens`` tokens. Each prompt runs once, in fp32 with eager attention and
``output_attentions=True``; every layer's probabilities ``[H, S, S]`` (all query rows) are kept.

Metrics (each a layer x layer matrix, averaged over passages):

* ``cosine`` (the primary one): for the same head index in layers i and j, the cosine
  similarity of the two attention distributions of each query row, averaged over query rows
  and heads. Symmetric, 1 on the diagonal, in [0, 1] (probabilities are non-negative).
* ``cosine-headavg``: the same on the head-averaged map ``mean_h A[h]`` of each layer.
* ``jsd``: ``1 - JSD`` (Jensen-Shannon divergence in bits, so in [0, 1]) per head and query
  row, averaged the same way. Symmetric, 1 on the diagonal.
* ``cosine-nosink``: ``cosine`` with the first key (the attention sink: BOS / ``<|im_start|>``)
  dropped and each row renormalized over the other keys (query row 0 dropped too). Late
  layers put much of their mass on that token, which by itself makes their rows alike; this
  variant shows how alike the rest of the distribution is.

Every query row counts equally; the first rows have few keys to choose from (row 0 attends
only to token 0), which adds a small common offset to all pairs.

Groups: sharing a group [a..b] makes every layer of it reuse layer a's probabilities, so a
group's score is its mean similarity-to-first, ``mean_{j=a+1..b} sim[a, j]``. For each group
size the windows are ranked by that score; the JSON also scores the paper's late-layer choice
(Llama-2-7B, 32 layers: layers 27-30, the span before the final layer) scaled to each depth.

    python tools/attention_similarity.py                     # both models, 16 passages
    python tools/attention_similarity.py --models smollm2-135m-instruct --passages 4
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("attention_similarity")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("smollm2-135m-instruct", str(ROOT / "gemma-3-270m-Q4_K_M.gguf"))  # the GGUF tools/reproduce_results.sh step 4 assembles
METRICS = ("cosine", "cosine-headavg", "jsd", "cosine-nosink")
METRIC_LABEL = {
    "cosine": "cosine similarity of attention rows (same head), mean over rows & heads",
    "cosine-headavg": "cosine similarity of head-averaged attention rows, mean over rows",
    "jsd": "1 - Jensen-Shannon divergence (bits) of attention rows (same head), mean over rows & heads",
    "cosine-nosink": "cosine similarity of attention rows (same head) without the first key (sink), renormalized, mean over rows & heads",
}
PAPER_LATE = (27, 30, 32)  # Shared Attention's Llama-2-7B span: layers 27..30 of 32 (the final layer keeps its own)


# --- similarity ---------------------------------------------------------------------------

def _cosine_gram(rows: torch.Tensor) -> torch.Tensor:
    """rows [L, R, K] (R distributions of K keys per layer) -> [L, L] mean over R of the cosine
    similarity of the two layers' r-th rows; all-zero rows count as 0."""
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    flat = unit.reshape(unit.shape[0], -1).double()
    return (flat @ flat.T / rows.shape[1]).float()


def _jsd_similarity(attn: torch.Tensor) -> torch.Tensor:
    """attn [L, H, S, S] -> [L, L] of 1 - JSD (bits), mean over heads and query rows."""
    L = attn.shape[0]
    x = attn.double()

    def entropy(p: torch.Tensor) -> torch.Tensor:  # [..., K] -> [...] in nats; 0 log 0 = 0
        return -torch.special.xlogy(p, p).sum(-1)

    ent = [entropy(x[i]) for i in range(L)]  # each [H, S]
    sim = torch.eye(L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1, L):
            jsd = entropy((x[i] + x[j]) / 2) - (ent[i] + ent[j]) / 2  # nats, in [0, ln 2]
            sim[i, j] = sim[j, i] = 1 - (jsd / math.log(2)).clamp(0, 1).mean()
    return sim.float()


def layer_similarity(attn: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Layer-by-layer similarity of one input's attention probabilities ``attn [L, H, S, S]``
    (rows sum to 1); returns ``[L, L]`` averaged over query rows (and heads)."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention probabilities [layers, heads, queries, keys] with queries == keys, got {tuple(attn.shape)}")
    attn = attn.float()
    if metric == "cosine":
        L, H, S, K = attn.shape
        return _cosine_gram(attn.reshape(L, H * S, K))
    if metric == "cosine-headavg":
        return _cosine_gram(attn.mean(1))
    if metric == "jsd":
        return _jsd_similarity(attn)
    if metric == "cosine-nosink":
        if attn.shape[-1] < 2:
            raise ValueError("cosine-nosink needs at least 2 positions")
        rest = attn[:, :, 1:, 1:]
        rest = rest / rest.sum(-1, keepdim=True).clamp_min(1e-12)
        L, H, S, K = rest.shape
        return _cosine_gram(rest.reshape(L, H * S, K))
    raise ValueError(f"unknown metric {metric!r}: use one of {METRICS}")


@torch.no_grad()
def attention_maps(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Every layer's attention probabilities ``[L, H, S, S]`` for one sequence (eager attention)."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise ValueError(f"attention probabilities need eager attention (the model uses {impl!r}): load it with attn_implementation='eager'")
    out = model(input_ids=input_ids.reshape(1, -1), output_attentions=True, use_cache=False)
    if not out.attentions or any(a is None for a in out.attentions):
        raise RuntimeError("the model returned no attention probabilities")
    return torch.stack([a[0] for a in out.attentions]).float()


def similarity_matrices(model, inputs, metrics=("cosine",), progress=None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """Each metric's ``[L, L]`` similarity, averaged over the input sequences (1-D token tensors).
    With ``stats``, also sets ``stats["sink_mass"]``: per layer, the mean probability on the first
    key (query rows from 8 on, all heads), averaged over the inputs."""
    totals: dict[str, torch.Tensor] = {}
    sink = None
    n = 0
    for ids in inputs:
        attn = attention_maps(model, torch.as_tensor(ids, dtype=torch.long))
        for m in metrics:
            sim = layer_similarity(attn, m)
            totals[m] = totals[m] + sim if m in totals else sim
        mass = attn[:, :, min(8, attn.shape[2] - 1) :, 0].mean((1, 2))
        sink = mass if sink is None else sink + mass
        n += 1
        del attn
        if progress is not None:
            progress()
    if not n:
        raise ValueError("no inputs")
    if stats is not None:
        stats["sink_mass"] = (sink / n).tolist()
    return {m: (t / n).numpy() for m, t in totals.items()}


# --- groups -------------------------------------------------------------------------------

def group_score(sim: np.ndarray, start: int, end: int) -> float:
    """Mean similarity of layers start+1..end to the group's first layer (what sharing reuses)."""
    if not 0 <= start < end < sim.shape[0]:
        raise ValueError(f"a group needs 0 <= start < end < {sim.shape[0]}, got [{start}, {end}]")
    return float(np.mean(sim[start, start + 1 : end + 1]))


def ranked_groups(sim: np.ndarray, size: int) -> list[dict]:
    """Every contiguous window of ``size`` layers, best mean similarity-to-first first."""
    L = sim.shape[0]
    rows = [{"layers": [a, a + size - 1], "size": size, "mean_sim_to_first": round(group_score(sim, a, a + size - 1), 4),
             "min_sim_to_first": round(float(np.min(sim[a, a + 1 : a + size])), 4)} for a in range(L - size + 1)]
    return sorted(rows, key=lambda r: -r["mean_sim_to_first"])


def paper_late_group(num_layers: int) -> tuple[int, int]:
    """The paper's Llama-2-7B span (27..30 of 32) scaled to ``num_layers``: same relative start,
    ending just before the final layer; at least two layers."""
    a, b, depth = PAPER_LATE
    end = num_layers - 1 - (depth - 1 - b)
    start = min(round(a * num_layers / depth), end - 1)
    return start, end


def suggestions(sim: np.ndarray, sizes, top: int) -> dict:
    L = sim.shape[0]
    out = {"by_size": {}}
    for size in sizes:
        if 2 <= size <= L:
            out["by_size"][str(size)] = ranked_groups(sim, size)[:top]
    # Disjoint pairs of equal groups (e.g. two groups of 5): the best by the mean of both scores.
    for size in sizes:
        if 2 <= size and 2 * size <= L:
            best = max(((a, b) for a in range(L - size + 1) for b in range(a + size, L - size + 1)),
                       key=lambda ab: group_score(sim, ab[0], ab[0] + size - 1) + group_score(sim, ab[1], ab[1] + size - 1))
            out.setdefault("two_disjoint", {})[str(size)] = [
                {"layers": [s, s + size - 1], "mean_sim_to_first": round(group_score(sim, s, s + size - 1), 4)} for s in best]
    start, end = paper_late_group(L)
    out["paper_late"] = {"layers": [start, end], "size": end - start + 1, "mean_sim_to_first": round(group_score(sim, start, end), 4),
                         "note": "Shared Attention's Llama-2-7B span 27-30 of 32 scaled to this depth (final layer not shared)"}
    out["last_10_before_final"] = ({"layers": [L - 11, L - 2], "mean_sim_to_first": round(group_score(sim, L - 11, L - 2), 4)}
                                   if L >= 12 else None)
    return out


# --- prompts ------------------------------------------------------------------------------

def squad_prompts(tokenizer, passages: int, max_tokens: int) -> tuple[list[torch.Tensor], dict]:
    """The first ``passages`` SQuAD dev contexts (first question each) as steerc prompts,
    the context truncated so a prompt has at most ``max_tokens`` tokens."""
    from steerc.eval import load_dataset
    from steerc.steering import PromptLayout, SteerConfig

    layout = PromptLayout.for_tokenizer(tokenizer)
    prefix = SteerConfig().prefixes[0]  # LLMSteer's first prefix, the runtime's default
    head = layout.head_ids(prefix)
    seen, prompts, truncated = set(), [], 0
    for ex in load_dataset("squad", split="dev"):
        if ex.group in seen:
            continue
        seen.add(ex.group)
        ctx, _ = layout.context_ids(ex.context)
        query = layout.query_ids(prefix, ex.question)
        room = max_tokens - len(head) - len(query)
        if room < 16:
            raise ValueError(f"--max-tokens {max_tokens} leaves no room for a context (instruction + question take {len(head) + len(query)})")
        truncated += len(ctx) > room
        prompts.append(torch.as_tensor(np.concatenate([head, ctx[:room], query])))
        if len(prompts) == passages:
            break
    lengths = [len(p) for p in prompts]
    info = {"format": "chat template" if layout.chat else "plain text", "prefix": prefix, "tokens_min": min(lengths),
            "tokens_mean": round(float(np.mean(lengths)), 1), "tokens_max": max(lengths), "truncated": truncated}
    return prompts, info


# --- figure -------------------------------------------------------------------------------

def short_name(spec: str) -> str:
    name = Path(spec).name
    return {"smollm2-135m-instruct": "SmolLM2-135M-Instruct"}.get(name, name.removesuffix(".gguf"))


def plot(results: list[dict], metric: str, passages: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 5.6), squeeze=False)
    lo = min(float(np.min(r["matrices"][metric])) for r in results)
    for ax, r in zip(axes[0], results):
        sim = np.asarray(r["matrices"][metric])
        L = sim.shape[0]
        im = ax.imshow(sim, vmin=lo, vmax=1.0, cmap="viridis", origin="upper")
        step = 2 if L > 20 else 1
        ticks = list(range(0, L, step))
        types = r.get("layer_types") or []
        full = {i for i, t in enumerate(types) if t == "full_attention"} if "sliding_attention" in types else set()
        ticks = sorted(set(ticks) | full)
        labels = [f"{i}*" if i in full else str(i) for i in ticks]
        ax.set_xticks(ticks, labels)
        ax.set_yticks(ticks, labels)
        ax.tick_params(labelsize=7)
        note = "   (* full-attention layer; others sliding-window)" if full else ""
        ax.set_xlabel(f"layer j{note}", fontsize=9)
        ax.set_ylabel("layer i", fontsize=9)
        ax.set_title(f"{r['name']} ({L} layers, {r['heads']} heads / {r['kv_heads']} KV heads)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(f"similarity ({metric})", fontsize=8)
    fig.suptitle(f"Layer-pair attention similarity: {METRIC_LABEL[metric]}\n{passages} SQuAD dev passages per model", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------

def dump_json(obj) -> str:
    """Indented JSON with every list of numbers on one line (a matrix row per line)."""
    number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    text = json.dumps(obj, indent=1)
    return re.sub(rf"\[\s*{number}(?:,\s*{number})*\s*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def _group_entries(obj):
    if isinstance(obj, dict):
        if "layers" in obj and isinstance(obj["layers"], list):
            yield obj
        for v in obj.values():
            yield from _group_entries(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _group_entries(v)


def run_model(spec: str, args, progress) -> dict:
    from steerc.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(spec, "fp32", "eager")
    model, cfg = loaded.model, loaded.config
    prompts, info = squad_prompts(loaded.tokenizer, args.passages, args.max_tokens)
    log.info("%s: %d layers, %d heads; %d prompts of %d-%d tokens (%s)", short_name(spec), cfg.num_hidden_layers, cfg.num_attention_heads,
             len(prompts), info["tokens_min"], info["tokens_max"], info["format"])
    task = progress.add_task(short_name(spec), total=len(prompts))
    stats: dict = {}
    mats = similarity_matrices(model, prompts, args.metrics, progress=lambda: progress.advance(task), stats=stats)
    sink = [round(x, 4) for x in stats["sink_mass"]]
    seconds = time.perf_counter() - t0
    primary = mats[args.metrics[0]]
    groups = suggestions(primary, args.group_sizes, args.top)
    for group in _group_entries(groups):  # every suggested group scored by every metric too
        a, b = group["layers"]
        group["by_metric"] = {m: round(group_score(v, a, b), 4) for m, v in mats.items()}
    return {"spec": spec, "name": short_name(spec), "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
            "kv_heads": getattr(cfg, "num_key_value_heads", cfg.num_attention_heads), "layer_types": getattr(cfg, "layer_types", None),
            "sliding_window": getattr(cfg, "sliding_window", None), "prompts": info, "seconds": round(seconds, 1),
            "matrices": {m: np.round(v.astype(np.float64), 4).tolist() for m, v in mats.items()},
            "sink_mass": {"mean_over_rows_heads_passages": sink, "note": "attention probability on the first key, query rows 8+, per layer"},
            "groups": groups}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model specs for steerc.models.load_model (default: SmolLM2 and Gemma-3-270M)")
    ap.add_argument("--passages", type=int, default=16, help="SQuAD dev passages per model (default 16)")
    ap.add_argument("--max-tokens", type=int, default=512, help="prompt length cap; the context is truncated to fit (default 512)")
    ap.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS, help="the first is plotted and ranks the groups")
    ap.add_argument("--group-sizes", nargs="+", type=int, default=[5, 10], help="group sizes to rank (default 5 10)")
    ap.add_argument("--top", type=int, default=5, help="windows listed per group size")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out-json", type=Path, default=ROOT / "docs" / "results" / "attention_similarity.json")
    ap.add_argument("--out-png", type=Path, default=ROOT / "docs" / "results" / "attention_similarity.png")
    args = ap.parse_args(argv)
    if args.passages < 1:
        ap.error("--passages must be at least 1")

    from rich.logging import RichHandler
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    for noisy in ("transformers", "steerc", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as progress:
        for spec in args.models:
            results.append(run_model(spec, args, progress))
    metric = args.metrics[0]
    for r in results:
        g = r["groups"]
        best = "; ".join(f"size {s}: {v[0]['layers'][0]}-{v[0]['layers'][1]} ({v[0]['mean_sim_to_first']:.3f})" for s, v in g["by_size"].items())
        pl = g["paper_late"]
        log.info("%s best groups by %s: %s; paper-late %d-%d (%.3f)", r["name"], metric, best, pl["layers"][0], pl["layers"][1], pl["mean_sim_to_first"])
    out = {"tool": "tools/attention_similarity.py", "metric": metric, "metrics": {m: METRIC_LABEL[m] for m in args.metrics},
           "data": {"dataset": "squad", "split": "dev", "passages": args.passages, "max_tokens": args.max_tokens,
                    "prompt": "steerc PromptLayout (chat template when the tokenizer has one, else plain text), LLMSteer's first prefix, first question"},
           "group_score": "mean over j=a+1..b of sim[a, j] (every layer of [a..b] reuses layer a's probabilities)",
           "dtype": "fp32", "attention": "eager", "seconds": round(time.perf_counter() - t0, 1),
           "models": results}
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(dump_json(out))
    plot(results, metric, args.passages, args.out_png)
    log.info("wrote %s and %s in %.0f s", args.out_json, args.out_png, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
