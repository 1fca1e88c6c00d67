"""Experiment: CacheBlend's choice of recomputed tokens (most-deviating KV) against ``first``, in eager torch.

Issue 28 asks whether a context assembled from cached documents can keep the full prefill's
quality. The compiled engine's ``--recompute-rule`` options re-prefill contiguous ranges, because
its bias is per key, not per query row (a recomputed token must not see later positions).
CacheBlend (EuroSys'25) recomputes *scattered* tokens: those whose KV deviates most from the full
prefill's at an early "check" layer. That needs a per-query-row mask, which the engine lacks, so
this experiment runs every variant in eager PyTorch on the same model (the default GGUF
de-quantized to fp32, as the engine is compiled from), with the same prompts and document tokens
as ``steerc eval --documents``. It decides whether the engine should grow a row mask for it.

Variants, all over the same tokens (instruction head, the 10 documents, the question):

* ``full``: one prefill of everything (the reference);
* ``cat``: each document's KV computed alone behind the head, keys moved to where it lands (R = 0);
* ``first@R``: ``ceil(R * n)`` leading tokens of every document but the first re-prefilled over
  the assembled cache (the engine's default rule; here in one call with a per-row causal mask,
  the same computation as the engine's document-by-document chunks);
* ``blend-k@R`` / ``blend-v@R``: the same budget of tokens, chosen globally as those whose layer-1
  key (LMCache v1's blender) or value (the CacheBlend paper's code) deviates most (squared L2)
  between the assembled cache and a full prefill of layers 0-1 (2 of 30 layers over every token:
  the check layer's cost);
* ``blend-k+first@R``: half the budget to ``first``, half to the most-deviating keys;
* ``NAME+bB`` (any of the above, e.g. ``cat+b-1``, ``first+b0.5``): the question and the answer
  attend with an additive bias ``B`` on every document key, APE's attention scaling (ICLR'25) as
  the per-key bias the engine's ``steer_bias`` can carry: ``B < 0`` moves attention from the
  assembled documents to the instruction head and the question, ``B > 0`` the other way.

A recomputed token attends to every earlier position (its recomputed KV where that was
recomputed too, else the cached one) and to itself, never to a later position. ``R = 1`` under
any rule equals the full prefill (checked on the first question: ``--check``).

    python tools/exp_cacheblend.py --split dev --limit 60 --doc-pool 100 --recompute 0.15 --out runs/exp-cacheblend-dev

Results (docs/results/documents.md, "CacheBlend's choice of tokens"): on dev ``blend-k`` at 0.3
matched the full prefill; once on test it scored as ``first`` (-12 / -9 points at 0.15 / 0.3).
A document bias of -1 or +1 lowered plain concatenation and ``first`` on dev ("A bias on the
assembled documents"), so it did not go to test.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch


def _cache(kv):
    from transformers import DynamicCache

    c = DynamicCache()
    for i, (k, v) in enumerate(kv):
        c.update(k.clone(), v.clone(), i)
    return c


def _kv(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


class Blend:
    def __init__(self, model, eos: set[int]):
        self.model, self.eos = model, eos
        self.rotary = model.model.rotary_emb

    @torch.inference_mode()
    def forward(self, ids, pos, kv=None, mask=None, layers: int | None = None):
        """Hidden states and the KV after ``ids`` at positions ``pos`` (1-D int arrays)."""
        m = self.model.model
        full = m.layers
        if layers is not None:
            m.layers = torch.nn.ModuleList(list(full)[:layers])
        try:
            out = m(input_ids=torch.as_tensor(ids)[None], position_ids=torch.as_tensor(pos)[None],
                    past_key_values=_cache(kv) if kv is not None else None, attention_mask=mask, use_cache=True)
        finally:
            m.layers = full
        return out.last_hidden_state, _kv(out.past_key_values)

    def shift(self, kv, delta: int):
        """Keys rotated by ``delta`` more positions (RoPE with fixed frequencies composes exactly)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        if not delta:
            return kv
        n = kv[0][0].shape[2]
        cos, sin = self.rotary(kv[0][0], torch.full((1, n), delta))
        return [(apply_rotary_pos_emb(k, k, cos, sin)[1], v) for k, v in kv]

    def recompute(self, ids, kv, sel: np.ndarray):
        """Re-prefill the tokens at positions ``sel`` (sorted) over ``kv`` (all T positions): each
        attends to the earlier positions (recomputed ones' new KV) and itself; their KV replaces the old."""
        if not len(sel):
            return kv
        T = kv[0][0].shape[2]
        chosen = np.zeros(T, bool)
        chosen[sel] = True
        p = torch.as_tensor(sel)
        past = (torch.arange(T)[None, :] < p[:, None]) & ~torch.as_tensor(chosen)[None, :]  # [S, T]
        new = p[None, :] <= p[:, None]  # [S, S]
        mask = torch.cat([past, new], 1)[None, None]  # [1, 1, S, T + S] True = attend
        _, out = self.forward(ids[sel], sel, kv, mask)
        merged = []
        for k, v in out:
            k2, v2 = k[:, :, :T].clone(), v[:, :, :T].clone()
            k2[:, :, sel], v2[:, :, sel] = k[:, :, T:], v[:, :, T:]
            merged.append((k2, v2))
        return merged

    @torch.inference_mode()
    def answer(self, kv, query_ids, max_new_tokens: int, doc_bias: float = 0.0, docs: tuple[int, int] = (0, 0)) -> list[int]:
        """Greedy answer after ``kv``; ``doc_bias`` is added to the attention logits of every
        query and generated token on the keys ``docs`` (start, end): a uniform additive scale of
        the assembled documents' attention (APE's scaling factor, as a log), the bias the
        engine's per-key ``steer_bias`` can carry."""
        T = kv[0][0].shape[2]
        q = len(query_ids)

        def mask(rows: int, keys: int):
            if not doc_bias:
                return None
            m = torch.zeros(1, 1, rows, keys)
            m[..., docs[0] : docs[1]] = doc_bias
            m[..., keys - rows :] = torch.triu(torch.full((rows, rows), float("-inf")), 1)  # [rows, rows] causal over the new tokens
            return m

        h, kv = self.forward(query_ids, np.arange(T, T + q), kv, mask(q, T + q))
        out, at = [], T + q
        for _ in range(max_new_tokens):
            tok = int(self.model.lm_head(h[0, -1]).argmax())
            if tok in self.eos:
                break
            out.append(tok)
            h, kv = self.forward(np.array([tok]), np.array([at]), kv, mask(1, at + 1))
            at += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--doc-pool", type=int, default=100)
    ap.add_argument("--recompute", type=float, nargs="+", default=[0.15])
    ap.add_argument("--variants", default="full,cat,first,blend-k,blend-v,blend-k+first")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="check R = 1 against the full prefill on the first question, then stop")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from steerc.eval import load_dataset
    from steerc.eval.metrics import best_subspan_em
    from steerc.models.loading import load_model
    from steerc.steering.config import SteerConfig
    from steerc.steering.documents.text import document_texts
    from steerc.steering.layout import PromptLayout

    loaded = load_model(None)
    model, tok = loaded.model.eval(), loaded.tokenizer
    eos = model.generation_config.eos_token_id
    blend = Blend(model, set(eos if isinstance(eos, list) else [eos]))
    layout = PromptLayout.for_tokenizer(tok)
    prefix = SteerConfig(method="none").prefixes[0]
    head = np.asarray(layout.head_ids(prefix), np.int64)
    Nh = len(head)
    _, head_kv = blend.forward(head, np.arange(Nh))
    examples = load_dataset("nq-multidoc", split=args.split, limit=args.limit, doc_pool=args.doc_pool)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "predictions.jsonl"
    done = {(r["id"], r["variant"]) for r in map(json.loads, rows_path.read_text().splitlines())} if rows_path.exists() else set()
    doc_cache: dict[bytes, list] = {}
    names = args.variants.split(",")
    with rows_path.open("a") as rows:
        for qi, ex in enumerate(examples):
            texts = document_texts(layout, list(ex.documents))
            docs = list(texts.ids)
            ids = np.concatenate([head, *docs])
            T, lengths = len(ids), [len(d) for d in docs]
            starts = np.cumsum([Nh] + lengths[:-1])
            query = np.asarray(layout.query_ids(prefix, ex.question), np.int64)
            t0 = time.perf_counter()
            _, full = blend.forward(ids, np.arange(T))
            t_full = time.perf_counter() - t0
            placed = []
            for d, s in zip(docs, starts):
                key = d.tobytes()
                if key not in doc_cache:
                    doc_cache[key] = [(k[:, :, Nh:], v[:, :, Nh:]) for k, v in blend.forward(d, np.arange(Nh, Nh + len(d)), head_kv)[1]]
                placed.append(blend.shift(doc_cache[key], int(s - Nh)))
            cat = [(torch.cat([head_kv[i][0], *(p[i][0] for p in placed)], 2), torch.cat([head_kv[i][1], *(p[i][1] for p in placed)], 2))
                   for i in range(len(head_kv))]
            t0 = time.perf_counter()
            _, check = blend.forward(ids, np.arange(T), layers=2)
            t_check = time.perf_counter() - t0
            dev_k = ((check[1][0] - cat[1][0]) ** 2).sum((0, 1, 3)).numpy()  # [T]
            dev_v = ((check[1][1] - cat[1][1]) ** 2).sum((0, 1, 3)).numpy()
            later = np.zeros(T, bool)
            later[Nh + lengths[0]:] = True  # the first document sits where it was computed: exact
            if args.check:
                every = np.flatnonzero(later)
                got = blend.recompute(ids, cat, every)
                diff = max(float((a - b).abs().max()) for (ka, va), (kb, vb) in zip(got, full) for a, b in ((ka, kb), (va, vb)))
                print(f"R = 1 vs full prefill: max |KV diff| {diff:.2e} over {len(every)} recomputed tokens; "
                      f"cat vs full at layer 0 keys {float((cat[0][0] - full[0][0]).abs().max()):.2e}")
                return

            def first(R):
                return np.concatenate([np.arange(s, s + math.ceil(R * n - 1e-9)) for i, (s, n) in enumerate(zip(starts, lengths)) if i]).astype(np.int64)

            def top(dev, budget, exclude=()):
                score = np.where(later, dev, -np.inf)
                score[list(exclude)] = -np.inf
                return np.sort(np.argsort(-score, kind="stable")[:budget]).astype(np.int64)

            for spec in names:
                name, _, b = spec.partition("+b")  # NAME+bB: answer with bias B on the document keys
                doc_bias = float(b) if b else 0.0
                for R in ([None] if name in ("full", "cat") else args.recompute):
                    variant = (name if R is None else f"{name}@{R:g}") + (f"+b{doc_bias:g}" if b else "")
                    if (ex.id, variant) in done:
                        continue
                    budget = 0 if R is None else len(first(R))
                    if name == "full":
                        kv, sel = full, np.zeros(0, np.int64)
                    elif name == "cat":
                        kv, sel = cat, np.zeros(0, np.int64)
                    else:
                        if name == "first":
                            sel = first(R)
                        elif name == "blend-k":
                            sel = top(dev_k, budget)
                        elif name == "blend-v":
                            sel = top(dev_v, budget)
                        elif name == "blend-k+first":
                            f = first(R / 2)
                            sel = np.union1d(f, top(dev_k, budget - len(f), exclude=f))
                        else:
                            raise SystemExit(f"unknown variant {name}")
                        t0 = time.perf_counter()
                        kv = blend.recompute(ids, cat, sel)
                    t_re = time.perf_counter() - t0 if len(sel) else 0.0
                    pred = tok.decode(blend.answer(kv, query, args.max_new_tokens, doc_bias, (Nh, T)), skip_special_tokens=True).strip()
                    first_sel = np.isin(sel, first(R)).mean() if len(sel) and R else None
                    row = {"id": ex.id, "variant": variant, "prediction": pred, "answers": list(ex.answers),
                           "subspan_em": best_subspan_em(pred, ex.answers), "recomputed": int(len(sel)), "context_tokens": T - Nh,
                           "share_in_first": None if first_sel is None else round(float(first_sel), 3),
                           "full_s": round(t_full, 4), "check_s": round(t_check, 4), "recompute_s": round(t_re, 4)}
                    rows.write(json.dumps(row) + "\n")
                    rows.flush()
            print(f"[{qi + 1}/{len(examples)}] {ex.id}", flush=True)
    summarize(rows_path, out / "summary.json")


def summarize(rows_path: Path, out: Path) -> None:
    from steerc.eval.stats import help_and_harm, paired_comparison

    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {})[r["id"]] = r
    ids = sorted(set.intersection(*(set(v) for v in by.values())))
    base = [by["full"][i]["subspan_em"] for i in ids]
    summary = {"questions": len(ids), "variants": {}}
    print(f"{len(ids)} questions; paired against the full prefill (subspan EM, 95% bootstrap)")
    for name, got in by.items():
        em = [got[i]["subspan_em"] for i in ids]
        p = paired_comparison(em, base)
        helped, harmed = help_and_harm(em, base)
        same = np.mean([got[i]["prediction"] == by["full"][i]["prediction"] for i in ids])
        timing = {k: float(np.median([got[i][k] for i in ids])) for k in ("full_s", "check_s", "recompute_s")}
        summary["variants"][name] = {"subspan_em": 100 * float(np.mean(em)), "diff": p.to_dict(), "help": helped.to_dict(), "harm": harmed.to_dict(),
                                     "same_answer": float(same), **timing}
        print(f"{name:22s} {100 * np.mean(em):5.1f}  {100 * p.diff.mean:+6.1f} [{100 * p.diff.low:+.1f}, {100 * p.diff.high:+.1f}]  "
              f"help {100 * helped.mean:4.1f} harm {100 * harmed.mean:4.1f} same {100 * same:3.0f}%  recompute {timing['recompute_s']:.2f}s")
    out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
