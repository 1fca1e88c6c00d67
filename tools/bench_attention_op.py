"""One decode step's attention, as ONNX Runtime runs it on the CPU: the standard ``Attention``
op the engines use against the same computation as grouped MatMuls (each KV head's query heads
as the rows of one ``FusedMatMul(transB)``, then Add bias, Softmax, MatMul), in the same run.

    python tools/bench_attention_op.py [--contexts 512 2016] [--heads 9 --kv-heads 3 --head-dim 64] [--threads 2]

Both graphs take ``q [1, H, 1, D]`` (grouped: reshaped ``[1, Hkv, H/Hkv, D]``, a free reshape),
the KV ``[1, Hkv, T, D]`` and an additive bias ``[1, 1, 1, T]``; their outputs are checked equal
first. Prints microseconds per call (medians of 5 rounds, interleaved) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _graphs(T: int, H: int, Hkv: int, D: int):
    from onnx import TensorProto, helper

    G = H // Hkv
    f = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    kv, bias, out = [f("k", [1, Hkv, T, D]), f("v", [1, Hkv, T, D])], f("b", [1, 1, 1, T]), f("y", None)
    standard = helper.make_model(helper.make_graph([helper.make_node("Attention", ["q", "k", "v", "b"], ["y"], scale=D ** -0.5)], "standard",
                                                   [f("q", [1, H, 1, D]), *kv, bias], [out]), opset_imports=[helper.make_opsetid("", 23)])
    nodes = [helper.make_node("FusedMatMul", ["q", "k"], ["s"], domain="com.microsoft", transB=1, alpha=D ** -0.5),  # [1, Hkv, G, T]
             helper.make_node("Add", ["s", "b"], ["sb"]), helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]  # [1, Hkv, G, D]
    grouped = helper.make_model(helper.make_graph(nodes, "grouped", [f("q", [1, Hkv, G, D]), *kv, bias], [out]),
                                opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)])
    return standard, grouped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2016])
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    H, Hkv, D = args.heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(0)
    print("| context | Attention µs | grouped MatMuls µs | Attention / grouped |")
    print("|---|---|---|---|")
    for T in args.contexts:
        standard, grouped = (ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]) for m in _graphs(T, H, Hkv, D))
        k, v = (rng.standard_normal((1, Hkv, T, D), np.float32) for _ in range(2))
        q, b = rng.standard_normal((1, H, 1, D), np.float32), rng.standard_normal((1, 1, 1, T), np.float32)
        feeds = {"standard": (standard, {"q": q, "k": k, "v": v, "b": b}), "grouped": (grouped, {"q": q.reshape(1, Hkv, H // Hkv, D), "k": k, "v": v, "b": b})}
        ya, yb = (s.run(None, feed)[0].reshape(-1) for s, feed in feeds.values())
        if not np.allclose(ya, yb, atol=1e-5):
            raise SystemExit(f"the two graphs differ at T={T}: {np.abs(ya - yb).max()}")
        times: dict[str, list[float]] = {name: [] for name in feeds}
        for _ in range(5):
            for name, (session, feed) in feeds.items():
                for _ in range(10):
                    session.run(None, feed)
                start = time.perf_counter()
                for _ in range(args.calls):
                    session.run(None, feed)
                times[name].append((time.perf_counter() - start) / args.calls * 1e6)
        a, g = statistics.median(times["standard"]), statistics.median(times["grouped"])
        print(f"| {T} | {a:.0f} | {g:.0f} | {a / g:.2f}x |")


if __name__ == "__main__":
    main()
