"""Parity of the rewrite per architecture: max |rewritten - eager reference| on untraced shapes.

For every tiny test architecture (2 layers, hidden 64, random weights; tests/tiny_models.py):
capture + insert_steering_bias, export to ONNX, then for prefill (P=0), decode (S=1) and
left-padded batches of 3, the largest absolute logits/KV error of
  * the rewritten program in PyTorch and in ONNX Runtime with zero bias vs the unmodified model,
  * both with a random N(0, 2^2) per-layer, per-head bias vs the eager reference with that bias
    added to each layer's explicit 4-D mask,
plus how much that bias moves the logits (showing the comparison could fail).

    python tools/parity_report.py [--opset 23] [--out docs/PARITY.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import TINY_MODELS, tiny_model  # noqa: E402

from steerc.backends.onnx import create_session, export_onnx  # noqa: E402
from steerc.capture import example_inputs, run_program  # noqa: E402
from steerc.build.steerable import capture_steerable  # noqa: E402
from steerc.reference import padded_positions, reference_step  # noqa: E402
from steerc.settings import CompileSettings  # noqa: E402

SHAPES = [(1, 0, 7, 0), (2, 6, 1, 0), (3, 0, 6, 2), (3, 5, 1, 2)]


def _max_err(got, ref, mask, seq):
    logits, present = got
    rows, keys = mask[:, -seq:].bool(), mask.bool()
    err = (torch.as_tensor(logits)[rows] - ref[0][rows]).abs().max().item()
    for g, r in zip(present, ref[1]):
        err = max(err, (torch.as_tensor(g).transpose(1, 2)[keys] - r.transpose(1, 2)[keys]).abs().max().item())
    return err


def measure(arch: str, opset: int) -> dict:
    model = tiny_model(arch)
    sp = capture_steerable(model, CompileSettings(max_seq_len=256, max_batch=8))
    program = run_program(sp.program)
    session = create_session(export_onnx(sp.program, Path(tempfile.mkdtemp()), sp.inputs, sp.outputs, opset))
    g = sp.geometry
    out = {"torch_zero": 0.0, "torch_steered": 0.0, "onnx_zero": 0.0, "onnx_steered": 0.0, "bias_effect": float("inf")}
    for B, P, S, pad in SHAPES:
        ids, _, mask, kv = example_inputs(g, torch.float32, B, P, S, seed=1)
        mask[0, :pad] = 0
        pos = padded_positions(mask, P)
        bias = 2.0 * torch.randn(B, g.num_layers, g.num_heads, P + S, generator=torch.Generator().manual_seed(5))
        plain = reference_step(model, ids, pos, mask, kv)
        steered = reference_step(model, ids, pos, mask, kv, bias)
        for name, b, ref in (("zero", torch.zeros_like(bias), plain), ("steered", bias, steered)):
            logits, *present = program(ids, pos, mask, kv, b)
            out[f"torch_{name}"] = max(out[f"torch_{name}"], _max_err((logits, present), ref, mask, S))
            feed = dict(zip([s.name for s in sp.inputs], [t.numpy() for t in (ids, pos, mask, *kv, b)]))
            logits, *present = session.run(None, feed)
            out[f"onnx_{name}"] = max(out[f"onnx_{name}"], _max_err((logits, present), ref, mask, S))
        rows = mask[:, -S:].bool()
        out["bias_effect"] = min(out["bias_effect"], (steered[0][rows] - plain[0][rows]).abs().max().item())
    out["sites"] = sp.reports[0].kinds
    out["gqa"] = f"{g.num_heads}/{g.num_kv_heads}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opset", type=int, default=23)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = [
        f"| architecture | sites | heads/kv | torch, zero bias | torch, steered | ORT opset {args.opset}, zero bias | ORT, steered | bias moves logits by ≥ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in TINY_MODELS:
        r = measure(arch, args.opset)
        sites = ", ".join(f"{k} ×{v}" for k, v in r["sites"].items())
        lines.append(f"| {arch} | {sites} | {r['gqa']} | {r['torch_zero']:.1e} | {r['torch_steered']:.1e} | {r['onnx_zero']:.1e} | {r['onnx_steered']:.1e} | {r['bias_effect']:.2f} |")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
