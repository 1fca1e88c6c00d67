"""Plot decode tokens/s against context length, one line per variant (engine or peer), from the
JSON ``tools/bench_decode.py`` writes.

    python tools/plot_decode.py docs/bench/decode-peers.json [--batch 1] [--label steerc="steerc fp32"] [--out docs/bench/decode-vs-context.png]

Needs matplotlib (``pip install 'steerc[bench]'``, or the ``results`` / ``dev`` extras).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def series(rows: list[dict], batch: int) -> dict[str, list[tuple[int, float]]]:
    """variant -> [(context, decode tok/s)] sorted by context, for one batch size, in the run's order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["batch"] == batch:
            out.setdefault(r["variant"], []).append((r["context"], r["decode_tok_s"]))
    return {k: sorted(v) for k, v in out.items()}


def plot(result: dict, out: Path, batch: int = 1, title: str | None = None, labels: dict[str, str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = series(result["rows"], batch)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--title", default=None)
    parser.add_argument("--label", nargs="+", default=[], metavar="VARIANT=TEXT", help="legend text for a variant")
    parser.add_argument("--out", default="docs/bench/decode-vs-context.png")
    args = parser.parse_args(argv)
    labels = dict(item.partition("=")[::2] for item in args.label)
    print(plot(json.loads(Path(args.json).read_text()), Path(args.out), args.batch, args.title, labels))


if __name__ == "__main__":
    main()
