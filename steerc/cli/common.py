"""Helpers the ``steerc`` commands share: the console, and the manifest's verify and analysis lines."""

from __future__ import annotations

__all__ = ["analysis_line", "rich_console", "verify_line"]


def rich_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def verify_line(check: dict) -> str:
    if "skipped" in check:
        return f"skipped: {check['skipped']}"
    line = f"ONNX Runtime vs eager: prefill {check['prefill_zero_bias_rel_err']:.1e}, steered decode {check['decode_steered_rel_err']:.1e} (tolerance {check['tolerance']:.0e})"
    if "importance" in check:
        line += f"; attn_importance {check['importance']['attn_importance_abs_err']:.1e}"
    return line


def analysis_line(manifest: dict) -> str:
    analysis = manifest.get("analysis")
    if not analysis:
        return "none (compiled with --no-importance: LLMSteer selection is unavailable)"
    extra = [o["name"] for o in analysis.get("outputs", ()) if o["name"] in ("attn_importance", "attn_queries")] or ["attn_importance"]
    return f"{analysis['model']} outputs {', '.join(extra)} (shares {analysis['data']})"
