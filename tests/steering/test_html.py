"""The importance/selection HTML page: escaping, marking, colours, validation, atomic write."""

import html
import re

import numpy as np
import pytest

from steerc.steering.html import render_html, write_html

TEXT = 'Say <script>alert("x")</script> & go.\n\n  Next line.'


def _word_offsets(text):
    return [m.span() for m in re.finditer(r"\S+", text)]


def _visible(page):
    body = re.search(r'<div class="text">(.*)</div>', page, re.S)[1]
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def _tokens(page):
    """(classes, alpha, title, text) of each token span, in order."""
    pattern = r'<span class="(tok[^"]*)" style="background-color: rgba\(255,140,0,([0-9.]+)\)" title="([^"]*)">([^<]*)</span>'
    spans = re.findall(pattern, page)
    return [(cls, float(a), html.unescape(t), html.unescape(x)) for cls, a, t, x in spans]


def test_escapes_script_and_keeps_text():
    offsets = _word_offsets(TEXT)
    page = render_html(TEXT, offsets, np.arange(len(offsets), dtype=float), None, title="<b>t</b>", stats={"<k>": "<v>"})
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>t</b>" not in page and "&lt;b&gt;t&lt;/b&gt;" in page
    assert "<td>&lt;k&gt;</td><td>&lt;v&gt;</td>" in page
    assert _visible(page) == TEXT
    assert [t[3] for t in _tokens(page)] == TEXT.split()
    assert "white-space: pre-wrap" in page and "<script" not in page.lower()


@pytest.mark.parametrize("offsets", [[(0, 0), (0, 3), (2, 5), (5, 5), (8, 12)], [(0, 12)], []])
def test_visible_text_with_specials_overlaps_and_gaps(offsets):
    text = "abcdefghijkl\nmn"
    page = render_html(text, offsets, None, None)
    assert _visible(page) == text


def test_selected_tokens_marked():
    offsets = _word_offsets(TEXT)
    selected = np.zeros(len(offsets), bool)
    selected[[1, 4]] = True
    toks = _tokens(render_html(TEXT, offsets, None, selected))
    assert [i for i, t in enumerate(toks) if t[0] == "tok sel"] == [1, 4]
    assert all(t[0] == "tok" for i, t in enumerate(toks) if i not in (1, 4))
    assert toks[1][2] == "token 1"


def test_colours_monotone_in_importance():
    offsets = _word_offsets(TEXT)
    importance = np.array([0.5, 4.0, 0.0, 2.0, 8.0, 1.0])
    assert len(offsets) == len(importance)
    toks = _tokens(render_html(TEXT, offsets, importance, None, stats={"alpha": 0.01}))
    alphas = np.array([t[1] for t in toks])
    order = np.argsort(importance)
    assert np.all(np.diff(alphas[order]) >= 0)
    assert alphas[np.argmax(importance)] == 1.0 and alphas[np.argmin(importance)] == 0.0
    assert alphas[1] == pytest.approx(0.5, abs=0.005)  # 4 / 8
    assert toks[1][2] == "token 1: importance 4"


def test_length_mismatch():
    offsets = _word_offsets(TEXT)
    with pytest.raises(ValueError, match=f"offsets has {len(offsets)}, importance has 3"):
        render_html(TEXT, offsets, np.ones(3), None)
    with pytest.raises(ValueError, match="selected has 2"):
        render_html(TEXT, offsets, None, np.ones(2, bool))
    with pytest.raises(ValueError, match="outside the text"):
        render_html("ab", [(0, 5)], None, None)


def test_write_html_atomic(tmp_path):
    target = tmp_path / "out" / "report.html"
    page = render_html("héllo wörld", [(0, 5), (6, 11)], np.array([1.0, 2.0]), np.array([True, False]))
    assert write_html(target, page) == target
    assert target.read_text(encoding="utf-8") == page
    write_html(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_write_html_failure_leaves_no_temp(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_html(target, b"not text")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
