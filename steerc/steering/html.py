"""A self-contained HTML page showing which context tokens matter and which are steered.

Each token is a ``<span>`` whose orange background grows with its importance (normalised by
the largest one); selected (highlighted) tokens are also bold, underlined and boxed. With an
evidence distribution (query-aware steering), each unit of the context (sentence or document) is
a ``<span class="unit">`` around its tokens whose blue band grows with its share of the evidence
(normalised by the largest share; the deepest band stays light enough to read), titled with the share and the steering strength applied to
it, so a clear pick stands out and a hedged one does not. The page has inline CSS only: no
scripts, no external resources, so it opens anywhere.
"""

from __future__ import annotations

import html
import os
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steerc.atomic import write_text_atomic

if TYPE_CHECKING:
    from steerc.steering.methods.base import EvidenceDistribution

__all__ = ["render_html", "write_html"]

_COLOUR = "rgba(255,140,0,{:.2f})"
_UNIT_COLOUR = "rgba(52,120,246,{:.2f})"
_UNIT_DEEPEST = 0.45  # the largest share's band: light enough to read the text over it
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; border: 1px solid #ddd; padding: 1em; }
.tok { border-radius: 2px; }
.unit { padding: 0.3em 0; border-radius: 3px; }
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


def _segments(text: str, offsets: Sequence) -> list[tuple[int, int, int | None]]:
    """``(start, end, token)`` pieces covering ``text`` in order (``token`` None: text between tokens)."""
    pieces, cursor = [], 0
    for i, offset in enumerate(offsets):
        start, end = (0, 0) if offset is None else (int(offset[0]), int(offset[1]))
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"token {i} has offsets {start}:{end} outside the text ({len(text)} characters): use this text's offsets")
        if start > cursor:
            pieces.append((cursor, start, None))
        start = max(start, cursor)  # overlapping offsets (byte-level BPE): show each character once
        if start < end:
            pieces.append((start, end, i))
        cursor = max(cursor, end)
    if cursor < len(text):
        pieces.append((cursor, len(text), None))
    return pieces


def _split(pieces: list[tuple[int, int, int | None]], cuts: Sequence[int]) -> list[tuple[int, int, int | None]]:
    """``pieces`` cut at each of ``cuts`` that falls inside one (a token across a unit boundary becomes two spans)."""
    out, cuts = [], sorted(set(cuts))
    for start, end, token in pieces:
        for cut in cuts[bisect_right(cuts, start) : bisect_left(cuts, end)]:
            out.append((start, cut, token))
            start = cut
        out.append((start, end, token))
    return out


def _unit_ranges(text: str, unit_chars, distribution: EvidenceDistribution) -> list[tuple[int, int]]:
    ranges = [(int(a), int(b)) for a, b in np.asarray(unit_chars, np.int64).reshape(-1, 2)]
    if len(ranges) != len(distribution.shares):
        raise ValueError(f"one character range per unit is needed, but there are {len(ranges)} ranges and {len(distribution.shares)} shares")
    previous_end = 0
    for u, (a, b) in enumerate(ranges):
        if not previous_end <= a <= b <= len(text):
            raise ValueError(f"{distribution.kind} {u + 1} has characters {a}:{b}, outside the text ({len(text)} characters) or overlapping "
                             "the unit before: units must be ordered ranges of this text")
        previous_end = b
    return ranges


def _unit_open(u: int, distribution: EvidenceDistribution, top: float) -> str:
    share, strength = distribution.shares[u], distribution.strength[u]
    shade = share / top if top > 0 else 0.0
    applied = not distribution.backed_off and distribution.alpha_applied < 1
    how = (f"steering strength {strength:.2f} of log(alpha) ({'emphasised' if strength == 0 else 'down-weighted'})" if applied
           else "not steered (the question was answered unsteered)")
    tip = f"{distribution.kind} {u + 1}: share {share:.1%} of the evidence; {how}"
    return (f'<span class="unit" data-unit="{u}" data-share="{share:.4f}" data-strength="{strength if applied else 0.0:.4f}" '
            f'style="background-color: {_UNIT_COLOUR.format(_UNIT_DEEPEST * shade)}" title="{html.escape(tip)}">')


def _body(text: str, offsets: Sequence, importance, selected, distribution: EvidenceDistribution | None = None, unit_chars=None) -> str:
    alphas = _alphas(importance, len(offsets))
    pieces = _segments(text, offsets)
    ranges = _unit_ranges(text, unit_chars, distribution) if distribution is not None else []
    pieces = _split(pieces, [c for r in ranges for c in r])
    starts = [a for a, _ in ranges]
    top = max(distribution.shares, default=0.0) if distribution is not None else 0.0
    parts, open_unit = [], None
    for start, end, token in pieces:
        u = bisect_right(starts, start) - 1
        unit = u if u >= 0 and start < ranges[u][1] else None  # the unit this piece lies in (pieces never cross a unit boundary)
        if unit != open_unit:
            if open_unit is not None:
                parts.append("</span>")
            if unit is not None:
                parts.append(_unit_open(unit, distribution, top))
            open_unit = unit
        if token is None:
            parts.append(html.escape(text[start:end]))
        else:
            value = None if importance is None else float(importance[token])
            parts.append(_token(token, text[start:end], alphas[token], value, selected is not None and bool(selected[token])))
    if open_unit is not None:
        parts.append("</span>")
    return "".join(parts)


def _stats(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return ""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in stats.items())
    return f'<table class="stats">{rows}</table>\n'


def _legend(distribution: EvidenceDistribution | None = None) -> str:
    ramp = "".join(f'<span style="background-color: {_COLOUR.format(a)}">{a:.2f}</span>' for a in (0.25, 0.5, 0.75, 1.0))
    out = f'<p class="legend">importance / max: {ramp} <span class="sel">selected</span></p>\n'
    if distribution is not None:
        units = "".join(f'<span style="background-color: {_UNIT_COLOUR.format(_UNIT_DEEPEST * a)}">{a:.2f}</span>' for a in (0.25, 0.5, 0.75, 1.0))
        out += (f'<p class="legend">{html.escape(distribution.kind)} share of the evidence / largest share: {units} '
                f"(hover a {html.escape(distribution.kind)} for its share and steering strength)</p>\n"
                f'<p class="legend distribution">{html.escape(distribution.describe())}</p>\n')
    return out


def render_html(
    text: str,
    offsets: Sequence[tuple[int, int]],
    importance: np.ndarray | None,
    selected: np.ndarray | None,
    *,
    title: str = "steerc",
    stats: Mapping[str, Any] | None = None,
    distribution: EvidenceDistribution | None = None,
    unit_chars: np.ndarray | Sequence[tuple[int, int]] | None = None,
) -> str:
    """The page: legend, ``stats`` as key/value rows, then ``text`` token by token; with an
    evidence ``distribution`` and its units' character ranges ``unit_chars [U, 2]`` (ordered, not
    overlapping), each unit shaded by its share."""
    _lengths(offsets, importance, selected)
    if (distribution is None) != (unit_chars is None):
        raise ValueError("shading the units needs both the distribution and the units' character ranges")
    name = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{name}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{name}</h1>\n{_legend(distribution)}{_stats(stats)}"
        f'<div class="text">{_body(text, offsets, importance, selected, distribution, unit_chars)}</div>\n</body>\n</html>\n'
    )


def write_html(path: str | os.PathLike, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    return write_text_atomic(path, page)
