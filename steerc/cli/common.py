"""Helpers the ``steerc`` commands share: the console, the ``--backend`` option, and the manifest's verify and analysis lines."""

from __future__ import annotations

from pathlib import Path

from steerc.backends import BACKENDS, backend_choices, backend_help, backend_names
from steerc.settings import DEVICES

__all__ = ["DEVICES", "add_backend_option", "add_encoding_option", "add_kv_store_dtype_option", "analysis_line", "deploy_lines", "rich_console", "verify_line"]


def add_kv_store_dtype_option(parser, default: str = "int8") -> None:
    """``--kv-store-dtype``: how the context store keeps KVs at rest (:data:`steerc.stores.KV_SCHEMES`).
    int8 is the default of the stores that last (``serve``, ``run``): on SQuAD test (200) and NQ
    gold-middle (200) it moved query steering by -0.2 F1 and -1 subspan EM point, neither
    significant (docs/BENCHMARKS.md); ``eval`` keeps ``engine`` so its scores measure the methods alone."""
    from steerc.stores import KV_SCHEMES

    parser.add_argument("--kv-store-dtype", default=default, choices=KV_SCHEMES,
                        help="how stored KVs are kept: engine (as computed), fp16 (half the bytes), int8 (a quarter, one fp16 scale per "
                             f"head and position); the engine runs at its own dtype either way (default {default})")


def add_backend_option(parser, what: str) -> None:
    """``--backend``, its choices and help from the registry (:data:`steerc.backends.BACKENDS`);
    old names (``torch-tensorrt``) are accepted but not listed."""
    parser.add_argument("--backend", default="onnx", choices=backend_choices(), metavar="{" + ",".join(backend_names()) + "}",
                        help=backend_help(what))


def add_encoding_option(parser, files: str) -> None:
    """``--encoding``: the text encoding of the command's input files (steerc/user_files.py reads
    them; without it UTF-8, or UTF-16 with a byte-order mark)."""
    parser.add_argument("--encoding", default=None, metavar="NAME",
                        help=f"text encoding of {files} when it is not UTF-8 (a Python codec name: cp1252, latin-1, utf-16-le, ...); "
                             "default: UTF-8, or UTF-16 with a byte-order mark")


def rich_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def verify_line(check: dict) -> str:
    if "skipped" in check:
        return f"skipped: {check['skipped']}"
    line = f"ONNX Runtime vs eager: prefill {check['prefill_zero_bias_rel_err']:.1e}, steered decode {check['decode_steered_rel_err']:.1e} (tolerance {check['tolerance']:.0e})"
    if "importance" in check:
        line += f"; attn_importance {check['importance']['attn_importance_abs_err']:.1e}"
    if "selector" in check:
        line += f"; selector vs analysis graph {check['selector']['selector_scores_abs_err']:.1e}"
    for name, entry in BACKENDS.items():  # the compiled forms checked beside the ONNX engine
        if name in check:
            line += f"; {entry.label} vs eager: prefill {check[name]['prefill_zero_bias_rel_err']:.1e}, steered decode {check[name]['decode_steered_rel_err']:.1e}"
    return line


def analysis_line(manifest: dict) -> str:
    analysis = manifest.get("analysis")
    if not analysis:
        return "none (compiled with --no-importance: LLMSteer selection is unavailable)"
    extra = [o["name"] for o in analysis.get("outputs", ()) if o["name"] in ("attn_importance", "attn_queries")] or ["attn_importance"]
    line = f"{analysis['model']} outputs {', '.join(extra)} (shares {analysis['data']})"
    selector = manifest.get("selector")
    if selector:
        scored = selector.get("score_layers", list(range(selector["layers"])))
        line += (f"; {selector['model']} layers 0-{selector['layers'] - 1}, attention of {','.join(map(str, scored))} "
                 f"(query selection; heads from the {selector['heads_from']})")
    return line


def deploy_lines(manifest: dict, folder) -> str:
    """The TensorRT target and compiled-backend lines of ``compile`` and ``inspect`` (empty when none)."""
    lines = ""
    w = manifest.get("weights") or {}
    if w.get("scheme") in ("int8", "int4"):
        how = "block min/max, minimum exact" if w.get("method") == "minmax" else ("symmetric" if w["symmetric"] else "asymmetric")
        lines += (f"  weights   {w['scheme']} MatMulNBits ({w['matmuls']} matmuls in {w.get('kernels', w['matmuls'])} kernels, block {w['block_size']}, {how}): "
                  f"{w['data_bytes_before'] / 2**20:.1f} -> {w['data_bytes_after'] / 2**20:.1f} MiB of weights\n")
    trt = manifest.get("tensorrt")
    if trt:
        names = ", ".join(p["name"] for p in trt["profiles"])
        graphs = " and ".join(trt.get("graphs") or [trt.get("graph", "model.onnx")])
        rewrites = sum(trt["rewrites"].values()) + sum((trt.get("analysis_rewrites") or {}).values())
        lines += f"  tensorrt  {graphs} pass the TensorRT parser rules ({rewrites} rewrite(s)); profiles {names}; build a plan: {Path(folder) / trt['trtexec']}\n"
    for name, entry in (manifest.get("backends") or {}).items():
        what = entry.get("package") or entry.get("plan")
        lines += f"  {name:<9} {what} ({entry.get('device', 'cuda')}, built in {entry.get('compile_seconds', 0):.0f} s); run with --backend {name}\n"
    return lines
