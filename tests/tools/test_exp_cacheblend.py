"""tools/exp_cacheblend.py's recompute on the tiny Llama: the mechanics its numbers rest on.

Recomputing every token after the first document equals the full prefill; a recomputed token
never sees a later position; moving cached keys by an offset equals computing them there.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from tiny_models import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import exp_cacheblend  # noqa: E402


def _setup(seed: int = 0):
    model = tiny_model("llama").eval()
    blend = exp_cacheblend.Blend(model, set())
    rng = np.random.default_rng(seed)
    head, docs = rng.integers(0, 100, 4), [rng.integers(0, 100, n) for n in (5, 7, 6)]
    return blend, head, docs


def _assembled(blend, head, docs):
    Nh = len(head)
    _, head_kv = blend.forward(head, np.arange(Nh))
    placed, at = [], Nh
    for d in docs:
        alone = [(k[:, :, Nh:], v[:, :, Nh:]) for k, v in blend.forward(d, np.arange(Nh, Nh + len(d)), head_kv)[1]]
        placed.append(blend.shift(alone, at - Nh))
        at += len(d)
    return [(torch.cat([head_kv[i][0], *(p[i][0] for p in placed)], 2), torch.cat([head_kv[i][1], *(p[i][1] for p in placed)], 2))
            for i in range(len(head_kv))]


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for (ka, va), (kb, vb) in zip(a, b) for x, y in ((ka, kb), (va, vb)))


def test_recomputing_every_later_token_equals_the_full_prefill():
    blend, head, docs = _setup()
    ids = np.concatenate([head, *docs])
    _, full = blend.forward(ids, np.arange(len(ids)))
    cat = _assembled(blend, head, docs)
    later = np.arange(len(head) + len(docs[0]), len(ids))
    assert _max_diff(cat, full) > 1e-3  # concatenation alone is not the full prefill
    assert _max_diff(blend.recompute(ids, cat, later), full) < 1e-5


def test_moved_keys_equal_keys_computed_there():
    blend, head, docs = _setup(1)
    ids = np.concatenate([head, docs[0]])
    _, here = blend.forward(ids, np.arange(len(ids)))
    _, there = blend.forward(ids, np.arange(len(ids)) + 9)
    moved = blend.shift(here, 9)
    assert _max_diff(moved, there) < 1e-5


def test_a_recomputed_token_does_not_see_later_positions():
    blend, head, docs = _setup(2)
    ids = np.concatenate([head, *docs])
    cat = _assembled(blend, head, docs)
    chosen = np.array([len(head) + len(docs[0]) + 1, len(head) + len(docs[0]) + 3])  # two tokens of the second document
    got = blend.recompute(ids, cat, chosen)
    changed = ids.copy()
    changed[-len(docs[2]):] = (changed[-len(docs[2]):] + 1) % 100  # a later document changes
    other = _assembled(blend, head, [docs[0], docs[1], changed[-len(docs[2]):]])
    again = blend.recompute(changed, other, chosen)
    for (k1, v1), (k2, v2) in zip(got, again):
        assert torch.equal(k1[:, :, chosen], k2[:, :, chosen]) and torch.equal(v1[:, :, chosen], v2[:, :, chosen])
    assert _max_diff(got, cat) > 1e-4  # the recompute did change something


def test_a_document_bias_is_an_additive_term_on_the_document_keys_only():
    blend, head, docs = _setup(3)
    ids = np.concatenate([head, *docs])
    T, Nh = len(ids), len(head)
    cat = _assembled(blend, head, docs)
    query = np.arange(3, 9)
    plain = blend.answer(cat, query, 6)
    assert blend.answer(cat, query, 6, 0.0, (Nh, T)) == plain
    # a bias that zeroes the documents' attention equals answering over the head's keys alone (same positions)
    _, head_kv = blend.forward(head, np.arange(Nh))
    h, kv = blend.forward(query, np.arange(T, T + len(query)), head_kv)
    alone, at = [], T + len(query)
    with torch.inference_mode():
        for _ in range(6):
            tok = int(blend.model.lm_head(h[0, -1]).argmax())
            alone.append(tok)
            h, kv = blend.forward(np.array([tok]), np.array([at]), kv)
            at += 1
    assert blend.answer(cat, query, 6, -1e4, (Nh, T)) == alone != plain
