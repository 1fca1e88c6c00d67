"""``Engine.select_scores``: the selector graph's scores equal the analysis graph's
``attn_importance`` of an unsteered call on the covered layers (a left-padded batch, a chunked
prefill over a cache, a decode-shaped step), and an engine compiled before the selector graph has none."""

import shutil

import numpy as np
import pytest

from steerc.engine_format import read_manifest, write_manifest
from steerc.errors import EngineError
from steerc.runtime import Engine


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return Engine.load(tiny_engine)


def old_engine(folder, tmp_path):
    """``folder`` as an engine compiled before the selector graph: no selector.onnx, no manifest entry."""
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "selector.onnx").unlink()
    manifest = read_manifest(old, check_files=False)
    manifest.pop("selector")
    manifest["verify"].pop("selector")
    write_manifest(old, {k: v for k, v in manifest.items() if k not in ("files", "checksum")})
    return Engine.load(old)


def test_scores_equal_the_analysis_graphs_on_the_covered_layers(engine):
    g, n, scored = engine.geometry, engine.selector_layers, list(engine.selector_score_layers)
    assert 0 < n < g.num_layers and scored == [0]  # the tiny engine's fallback selector covers layer 0 of 2: the graph is cut
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, (2, 11))
    mask = np.ones((2, 11), np.int64)
    mask[0, :3] = 0  # left padding
    cache = engine.new_cache(2)
    for start, end in ((0, 6), (6, 10), (10, 11)):  # prefill in chunks over the growing cache, then a decode-shaped step
        m = mask[:, :end]
        positions = np.maximum(np.cumsum(m, 1) - 1, 0)[:, start:end]
        bias = np.zeros((2, g.num_layers, g.num_heads, end), np.float32)
        got = engine.select_scores(ids[:, start:end], positions, m, cache)
        _, next_cache, want = engine.analyze(ids[:, start:end], positions, m, cache, bias)
        assert got.shape == (2, len(scored), g.num_heads, end)
        np.testing.assert_allclose(got, want[:, scored], rtol=1e-5, atol=1e-5)
        cache = next_cache


def test_an_engine_without_the_selector_graph(tiny_engine, tmp_path):
    engine = old_engine(tiny_engine, tmp_path)
    assert engine.selector_layers == 0 and engine.selector_score_layers == ()
    with pytest.raises(EngineError, match="no selector graph"):
        engine.select_scores(np.zeros((1, 2), np.int64), np.arange(2)[None], np.ones((1, 2), np.int64), engine.new_cache(1))
