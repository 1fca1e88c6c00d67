"""Experiment (issue 26, measured, not a pass): an 8-bit KV cache in a GroupQueryAttention engine.

At 2K tokens a decode step of the default int4 engine reads about as many KV bytes (fp32: 93 MB
over 30 layers) as weight bytes, and ``tools/profile_step.py`` puts half the step in attention.
ONNX Runtime's ``GroupQueryAttention`` can keep its cache in int8 (``kv_cache_bit_width=8``,
``k_quant_type``/``v_quant_type`` ``PER_CHANNEL``, static ``k_scale``/``v_scale`` inputs): this
script rewrites a ``--kv in-place --attention-op group-query`` engine's step graph that way,
with each layer's per-channel scales calibrated on a real-text prefill (SQuAD dev contexts:
absmax x ``--margin`` / 127), then measures, in one process:

* fidelity on held-out prompts (NQ passages + question): last-prompt-token logits against the fp32
  cache, and greedy agreement (32 tokens) with and without a random steering bias;
* decode tok/s of the fp32-cache and int8-cache graphs through the same IO-binding loop
  (interleaved, medians), and llama.cpp on the source GGUF, at each ``--contexts``.

    PYTHONPATH=. python tools/exp_int8_kv.py engines/smollm2-int4-gqa /tmp/int4-gqa-kv8 --contexts 512 2016 --out docs/bench/decode-int8-kv-experiment.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from harness import interleave, machine, package_versions, setup_llama_cpp, squad_context, write_json


def calibrate(engine, ids: np.ndarray) -> list[np.ndarray]:
    """Per layer, K then V: the per-channel absmax ``[Hkv, D]`` over a prefill of ``ids``."""
    from steerc.runtime import prefill

    _, cache = prefill(engine, ids, np.ones_like(ids), engine.new_cache(1), chunk=256)
    return [np.abs(a[0]).max(axis=1) for a in cache.flat()]  # [Hkv, D] each


def rewrite(src: Path, dst: Path, absmax: list[np.ndarray], margin: float) -> list[np.ndarray]:
    """A copy of the engine folder whose step graph keeps int8 KV buffers; returns the scales."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    model = onnx.load(str(src / "model.onnx"), load_external_data=False)
    graph = model.graph
    scales = [np.maximum(a * margin, 1e-6).astype(np.float32) / 127 for a in absmax]
    for v in (*graph.input, *graph.output):
        if v.name.startswith(("past_key_values.", "present.")):
            v.type.tensor_type.elem_type = TensorProto.INT8
    layer = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        ks, vs = f"kv8/{layer}/k_scale", f"kv8/{layer}/v_scale"
        graph.initializer.extend([numpy_helper.from_array(scales[2 * layer].reshape(-1), ks), numpy_helper.from_array(scales[2 * layer + 1].reshape(-1), vs)])
        while len(node.input) < 12:
            node.input.append("")
        node.input.extend([ks, vs])
        node.attribute.extend([helper.make_attribute("kv_cache_bit_width", 8), helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL")])
        layer += 1
    keep = [v for v in graph.value_info if not v.name.startswith("present.")]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    onnx.save_model(model, str(dst / "model.onnx"))
    return scales


class Loop:
    """Greedy decode through IO binding on one in-place graph (batch 1), buffers of ``dtype``."""

    def __init__(self, path: Path, geometry, threads: int, dtype, scales=None):
        from steerc.backends.onnx import create_session

        self.session = create_session(path, threads=threads)
        self.g, self.dtype, self.scales = geometry, dtype, scales
        self.past = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]

    def run(self, ids: np.ndarray, new: int, bias: np.ndarray | None = None, chunk: int = 256) -> tuple[float, float, list[int], np.ndarray]:
        import onnxruntime as ort

        g, S0 = self.g, ids.shape[1]
        C = -(-(S0 + new) // 128) * 128
        bufs = [np.zeros((1, g.num_kv_heads, C, g.head_dim), self.dtype) for _ in self.past]
        values = [ort.OrtValue.ortvalue_from_numpy(b) for b in bufs]
        full_bias = np.zeros((1, g.num_layers, g.num_heads, S0 + new), np.float32)
        if bias is not None:
            full_bias[..., :S0] = bias

        def step(tokens: np.ndarray, start: int) -> np.ndarray:
            S = tokens.shape[1]
            b = self.session.io_binding()
            b.bind_output("logits", "cpu")
            for n, x in (("input_ids", tokens), ("position_ids", np.arange(start, start + S, dtype=np.int64)[None]),
                         ("attention_mask", np.ones((1, start + S), np.int64)), ("steer_bias", np.ascontiguousarray(full_bias[..., :start + S]))):
                b.bind_cpu_input(n, x)
            for name, v in zip(self.past, values):
                b.bind_ortvalue_input(name, v)
                b.bind_ortvalue_output("present." + name[len("past_key_values."):], v)
            self.session.run_with_iobinding(b)
            return b.get_outputs()[0].numpy()[0, -1]

        start = time.perf_counter()
        for i in range(0, S0, chunk):
            logits = step(ids[:, i:i + chunk], i)
        first_logits = logits
        token = int(logits.argmax())
        stamps, tokens = [time.perf_counter()], [token]
        for j in range(new - 1):
            logits = step(np.array([[token]], np.int64), S0 + j)
            token = int(logits.argmax())
            tokens.append(token)
            stamps.append(time.perf_counter())
        return stamps[0] - start, stamps[-1] - stamps[0], tokens, first_logits


def held_out_prompts(tokenizer, n: int = 4) -> list[np.ndarray]:
    """NQ-open oracle passages with their question, as chat prompts (not the calibration text)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nq-open-oracle.jsonl.gz"
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            doc = row.get("ctxs", [{}])[0] if row.get("ctxs") else {}
            text = (doc.get("title", "") + "\n" + doc.get("text", "")) if doc else json.dumps(row)[:2000]
            msgs = [{"role": "user", "content": f"{text}\n\nQuestion: {row.get('question', '')}"}]
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            out.append(np.array([ids], np.int64))
            if len(out) == n:
                return out
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path, help="an engine compiled with --kv in-place --attention-op group-query")
    p.add_argument("out", type=Path, help="where the int8-cache copy goes (replaced)")
    p.add_argument("--margin", type=float, default=1.25)
    p.add_argument("--calibration-tokens", type=int, default=1024)
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2016])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gguf", default=None)
    p.add_argument("--out-json", "--json", dest="json", default=None)
    args = p.parse_args()

    from steerc.runtime import Engine

    engine = Engine.load(args.engine, threads=args.threads)
    g, tok = engine.geometry, engine.tokenizer
    calib_text = squad_context(tok, args.calibration_tokens)[0]
    calib = np.array([tok(calib_text)["input_ids"][: args.calibration_tokens]], np.int64)
    scales = rewrite(args.engine, args.out, calibrate(engine, calib), args.margin)
    fp32 = Loop(args.engine / "model.onnx", g, args.threads, np.float32)
    int8 = Loop(args.out / "model.onnx", g, args.threads, np.int8, scales)

    fidelity = []
    rng = np.random.default_rng(0)
    for ids in held_out_prompts(tok):
        bias = rng.normal(0, 2, size=(1, g.num_layers, g.num_heads, ids.shape[1])).astype(np.float32)
        row = {"tokens": int(ids.shape[1])}
        for name, b in (("plain", None), ("steered", bias)):
            *_, ta, la = fp32.run(ids, 32, b)
            *_, tb, lb = int8.run(ids, 32, b)
            same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), len(ta))
            row[name] = {"logits_max_abs_err": float(np.abs(la - lb).max()), "logits_range": float(la.max() - la.min()), "identical_prefix": same}
        fidelity.append(row)
        print(json.dumps(row))

    gguf = args.gguf or (engine.manifest.get("source") or {}).get("path")
    llama, note = setup_llama_cpp(gguf, max(args.contexts) + args.new_tokens + 16, args.threads, args.new_tokens)
    rows = []
    for context in args.contexts:
        ids = np.array([rng.integers(100, g.vocab_size if hasattr(g, "vocab_size") else 40000, context)], np.int64)
        runs = {"fp32-cache": lambda: fp32.run(ids, args.new_tokens)[:2], "int8-cache": lambda: int8.run(ids, args.new_tokens)[:2]}
        if llama is not None:
            runs["llama.cpp"] = lambda: llama(ids)[:2]
        samples = interleave(runs, args.repeats)
        tps = {k: statistics.median((args.new_tokens - 1) / s[1] for s in v) for k, v in samples.items()}
        ttft = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
        row = {"context": context, "tok_s": {k: round(v, 1) for k, v in tps.items()}, "ttft_s": {k: round(v, 3) for k, v in ttft.items()},
               "int8/fp32": round(tps["int8-cache"] / tps["fp32-cache"], 3)}
        if "llama.cpp" in tps:
            row["fp32/llama.cpp"] = round(tps["fp32-cache"] / tps["llama.cpp"], 3)
            row["int8/llama.cpp"] = round(tps["int8-cache"] / tps["llama.cpp"], 3)
        rows.append(row)
        print(json.dumps(row))
    result = {"engine": str(args.engine), "margin": args.margin, "calibration_tokens": int(calib.shape[1]), "fidelity": fidelity, "decode": rows,
              "llama_cpp_note": note, "threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "versions": package_versions(), "machine": machine()}
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
