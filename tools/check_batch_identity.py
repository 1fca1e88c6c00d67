"""By hand, on a real engine: greedy tokens of rows decoded together in one ``DecodeBatch``
against each row decoded alone with ``generate`` (24 tokens), rows joining at different steps.

    python tools/check_batch_identity.py ENGINE [--left-padded] [--threads 2]

Two cases: four copies of one chat prompt joining one step apart, and two prompts of different
lengths, the second joining 0-3 steps after the first. Prints, per row, the first token that
differs from its solo run (None: identical). ``--left-padded`` forces the left-padded batch
layout on an engine that would hold its rows left-aligned (``Engine.aligned_rows``), to compare.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine")
    ap.add_argument("--left-padded", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()
    import numpy as np

    from steerc.runtime import Engine, generate, prefill
    from steerc.runtime.decode_batch import BatchRow, DecodeBatch
    from steerc.runtime.text import chat_ids

    eng = Engine.load(args.engine, threads=args.threads)
    n = args.new_tokens

    def ids(prompt: str) -> np.ndarray:
        return np.array([chat_ids(eng.tokenizer, [{"role": "user", "content": prompt}])])

    def solo(x) -> list[int]:
        return [int(t[0]) for t in generate(eng, x, max_new_tokens=n, stop_token_ids=set())]

    def batched(xs, joins) -> list[list[int]]:
        batch, got = DecodeBatch(eng, 8), [[] for _ in xs]
        batch.aligned = batch.aligned and not args.left_padded
        for step in range(max(joins) + n + 2):
            for i, (x, j) in enumerate(zip(xs, joins)):
                if j == step:
                    logits, cache = prefill(eng, x, np.ones(x.shape, np.int64), eng.new_cache(1))
                    batch.add(BatchRow(logits[0], cache, emit=got[i].append, max_new_tokens=n))
            batch.step()
        return got

    def first_diff(a, b):
        return next((k for k, (u, v) in enumerate(zip(a, b)) if u != v), None if len(a) == len(b) else min(len(a), len(b)))

    layout = "left-aligned" if eng.aligned_rows and not args.left_padded else "left-padded"
    print(f"{eng.folder.name}: batch layout {layout}")
    x = ids("Explain in two sentences why the sky is blue, for a child who asks.")
    want = solo(x)
    print("4 copies joining a step apart, first differing token per row:", [first_diff(g, want) for g in batched([x] * 4, [0, 1, 2, 3])])
    a = ids("What is the capital of France? Answer in one sentence, then name its river.")
    b = ids("List three colours of the rainbow and one fruit of each colour.")
    wa, wb = solo(a), solo(b)
    for gap in (0, 1, 2, 3):
        ga, gb = batched([a, b], [0, gap])
        print(f"prompts of {a.shape[1]} and {b.shape[1]} tokens, the second joining {gap} steps later: first differing token", first_diff(ga, wa), first_diff(gb, wb))


if __name__ == "__main__":
    main()
