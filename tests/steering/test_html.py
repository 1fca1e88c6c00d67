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


# Three units of TEXT2 (sentences); token offsets by word, one token ("fox.Then") across a unit boundary.
TEXT2 = "A <b>cat</b> sat. The fox.Then & it ran."
UNITS2 = [(0, 17), (18, 26), (26, 40)]


def _distribution(shares, strength, alpha_applied=0.1, hedge="soft", backed_off=False):
    from steerc.steering.methods.base import EvidenceDistribution

    return EvidenceDistribution("sentence", tuple(shares), tuple(strength), alpha_applied, hedge, backed_off)


def _units(page):
    """(unit, share, strength, alpha, title, visible text) of each unit span, in order (the page parsed as HTML)."""
    from html.parser import HTMLParser

    class Units(HTMLParser):
        def __init__(self):
            super().__init__()
            self.units, self.depth = [], 0  # depth: spans open inside the current unit (0: outside any unit)

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "span" and a.get("class") == "unit":
                assert self.depth == 0, "a unit inside a unit"
                alpha = float(re.fullmatch(r"background-color: rgba\(52,120,246,([0-9.]+)\)", a["style"])[1])
                self.units.append([int(a["data-unit"]), float(a["data-share"]), float(a["data-strength"]), alpha, a["title"], ""])
                self.depth = 1
            elif tag == "span" and self.depth:
                self.depth += 1

        def handle_endtag(self, tag):
            if tag == "span" and self.depth:
                self.depth -= 1

        def handle_data(self, data):
            if self.depth:
                self.units[-1][5] += data

    parser = Units()
    parser.feed(re.search(r'<div class="text">(.*)</div>', page, re.S)[1])
    return [tuple(u) for u in parser.units]


def test_units_shaded_by_their_share():
    offsets = _word_offsets(TEXT2)
    d = _distribution([0.2, 0.5, 0.3], [0.6, 0.0, 0.4], alpha_applied=0.25)
    page = render_html(TEXT2, offsets, np.arange(len(offsets), dtype=float), None, distribution=d, unit_chars=np.array(UNITS2))
    units = _units(page)
    assert [u[0] for u in units] == [0, 1, 2] and page.count('class="unit"') == 3  # one span per unit
    assert [u[1] for u in units] == [0.2, 0.5, 0.3] and [u[2] for u in units] == [0.6, 0.0, 0.4]
    assert [u[3] for u in units] == [0.18, 0.45, 0.27]  # 0.45 (the deepest band) x share / largest share
    assert [u[5] for u in units] == [TEXT2[a:b] for a, b in UNITS2]  # each unit holds exactly its characters
    assert units[1][4] == "sentence 2: share 50.0% of the evidence; steering strength 0.00 of log(alpha) (emphasised)"
    assert "share 20.0%" in units[0][4] and "strength 0.60 of log(alpha) (down-weighted)" in units[0][4]
    assert _visible(page) == TEXT2 and "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt;" in page
    toks = _tokens(page)
    assert [t[3] for t in toks] == ["A", "<b>cat</b>", "sat.", "The", "fox.", "Then", "&", "it", "ran."]  # the token across a boundary: two spans
    assert toks[4][2] == toks[5][2] == "token 4: importance 4"
    assert html.escape(d.describe()) in page and "share of the evidence / largest share" in page


def test_units_of_an_unsteered_answer_say_so():
    d = _distribution([0.6, 0.4, 0.0], [0.0, 1.0, 1.0], alpha_applied=1.0, hedge="off", backed_off=True)
    units = _units(render_html(TEXT2, _word_offsets(TEXT2), None, None, distribution=d, unit_chars=UNITS2))
    assert [u[2] for u in units] == [0.0, 0.0, 0.0] and all("not steered (the question was answered unsteered)" in u[4] for u in units)
    assert [u[3] for u in units] == [0.45, 0.3, 0.0]


def test_units_must_match_the_distribution_and_the_text():
    offsets, d = _word_offsets(TEXT2), _distribution([0.5, 0.5, 0.0], [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="2 ranges and 3 shares"):
        render_html(TEXT2, offsets, None, None, distribution=d, unit_chars=UNITS2[:2])
    with pytest.raises(ValueError, match="sentence 2 has characters 10:26"):
        render_html(TEXT2, offsets, None, None, distribution=d, unit_chars=[(0, 17), (10, 26), (26, 40)])
    with pytest.raises(ValueError, match="outside the text"):
        render_html(TEXT2, offsets, None, None, distribution=d, unit_chars=[(0, 17), (18, 26), (26, 99)])
    with pytest.raises(ValueError, match="needs both"):
        render_html(TEXT2, offsets, None, None, distribution=d)
    assert 'class="unit"' not in render_html(TEXT2, offsets, None, None)  # no distribution: the page of before
