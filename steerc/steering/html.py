"""A self-contained HTML page showing which context tokens matter and which are steered.

Each token is a ``<span>`` whose orange background grows with its importance (normalised by
the largest one); selected (highlighted) tokens are also bold, underlined and boxed. The page
has inline CSS only: no scripts, no external resources, so it opens anywhere.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steerc.atomic import write_text_atomic

__all__ = ["render_html", "write_html"]

_COLOUR = "rgba(255,140,0,{:.2f})"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; border: 1px solid #ddd; padding: 1em; }
.tok { border-radius: 2px; }
.sel { font-weight: bold; text-decoration: underline; border: 1px solid #c0392b; }
.legend span { padding: 0 0.4em; margin-right: 0.5em; }
table.stats { border-collapse: collapse; margin: 1em 0; }
table.stats td { border: 1px solid #ddd; padding: 0.2em 0.6em; }
"""


def _lengths(offsets: Sequence, importance: np.ndarray | None, selected: np.ndarray | None) -> None:
    lengths = {"offsets": len(offsets)}
    if importance is not None:
        lengths["importance"] = len(importance)
    if selected is not None:
        lengths["selected"] = len(selected)
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"one entry per token is needed, but {got}: pass arrays for the same tokenisation")


def _alphas(importance: np.ndarray | None, n: int) -> np.ndarray:
    if importance is None:
        return np.zeros(n)
    values = np.clip(np.nan_to_num(np.asarray(importance, np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    top = values.max(initial=0.0)
    return values / top if top > 0 else np.zeros(n)


def _token(i: int, piece: str, alpha: float, value: float | None, selected: bool) -> str:
    tip = f"token {i}" if value is None else f"token {i}: importance {value:.4g}"
    cls = "tok sel" if selected else "tok"
    style = f"background-color: {_COLOUR.format(alpha)}"
    return f'<span class="{cls}" style="{style}" title="{html.escape(tip)}">{html.escape(piece)}</span>'


def _body(text: str, offsets: Sequence, importance, selected) -> str:
    alphas = _alphas(importance, len(offsets))
    parts, cursor = [], 0
    for i, offset in enumerate(offsets):
        start, end = (0, 0) if offset is None else (int(offset[0]), int(offset[1]))
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"token {i} has offsets {start}:{end} outside the text ({len(text)} characters): use this text's offsets")
        if start > cursor:
            parts.append(html.escape(text[cursor:start]))
        start = max(start, cursor)  # overlapping offsets (byte-level BPE): show each character once
        if start < end:
            value = None if importance is None else float(importance[i])
            parts.append(_token(i, text[start:end], alphas[i], value, selected is not None and bool(selected[i])))
        cursor = max(cursor, end)
    parts.append(html.escape(text[cursor:]))
    return "".join(parts)


def _stats(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return ""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in stats.items())
    return f'<table class="stats">{rows}</table>\n'


def _legend() -> str:
    ramp = "".join(f'<span style="background-color: {_COLOUR.format(a)}">{a:.2f}</span>' for a in (0.25, 0.5, 0.75, 1.0))
    return f'<p class="legend">importance / max: {ramp} <span class="sel">selected</span></p>\n'


def render_html(
    text: str,
    offsets: Sequence[tuple[int, int]],
    importance: np.ndarray | None,
    selected: np.ndarray | None,
    *,
    title: str = "steerc",
    stats: Mapping[str, Any] | None = None,
) -> str:
    """The page: legend, ``stats`` as key/value rows, then ``text`` token by token."""
    _lengths(offsets, importance, selected)
    name = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{name}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{name}</h1>\n{_legend()}{_stats(stats)}"
        f'<div class="text">{_body(text, offsets, importance, selected)}</div>\n</body>\n</html>\n'
    )


def write_html(path: str | os.PathLike, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    return write_text_atomic(path, page)
