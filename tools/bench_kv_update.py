"""How to extend the KV cache between decode steps on CPU, measured (one run, interleaved).

* ``numpy``      ``session.run`` with numpy past inputs; presents come back as numpy arrays
* ``iobinding``  presents stay ``OrtValue``s and are bound as the next step's past inputs
                 (no numpy round trip)

Both give identical logits (checked). Prints ms per decode step at each context length.

    python tools/bench_kv_update.py ENGINE_DIR [--contexts 128 512 1024] [--steps 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def decode_numpy(engine, cache, steps, token=100):
    from steerc.runtime import decode_one_token

    mask = np.ones((1, cache.length), np.int64)
    out = None
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
        out, cache = decode_one_token(engine, np.array([token]), mask, cache)
    return out


def decode_iobinding(engine, cache, steps, token=100):
    import onnxruntime as ort

    g = engine.geometry
    session = engine.session
    pasts = [ort.OrtValue.ortvalue_from_numpy(a) for a in cache.flat()]
    length = cache.length
    logits = None
    for _ in range(steps):
        binding = session.io_binding()
        total = length + 1
        binding.bind_cpu_input("input_ids", np.array([[token]], np.int64))
        binding.bind_cpu_input("position_ids", np.array([[length]], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        for name, value in zip(engine.input_names[3:-1], pasts):
            binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("steer_bias", np.zeros((1, g.num_layers, g.num_heads, total), np.float32))
        for name in engine.output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits, pasts = outputs[0].numpy()[:, -1], outputs[1:]
        length = total
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from steerc.runtime import Engine, prefill

    engine = Engine.load(args.engine)
    for context in args.contexts:
        ids = np.random.default_rng(0).integers(100, 30000, (1, context))
        _, cache = prefill(engine, ids, np.ones((1, context), np.int64), engine.new_cache(1))
        a, b = decode_numpy(engine, cache, 2), decode_iobinding(engine, cache, 2)
        assert np.array_equal(a, b), "the two update paths disagree"
        times = {"numpy": [], "iobinding": []}
        for _ in range(args.repeats):
            for name, fn in (("numpy", decode_numpy), ("iobinding", decode_iobinding)):
                start = time.perf_counter()
                fn(engine, cache, args.steps)
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"context {context:>5}: numpy {med['numpy']:6.2f} ms/step, iobinding {med['iobinding']:6.2f} ms/step, ratio {med['iobinding'] / med['numpy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
