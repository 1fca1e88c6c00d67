"""Q-LLM block math against plain-loop numpy references."""

import numpy as np
import pytest

from steerc.runtime.kv_cache import KVCache
from steerc.steering.blocks import block_bounds, block_scores, kept_tokens, layer_scores, representative_keys


def test_block_bounds_cover_the_context_once():
    b = block_bounds(10, 4)
    assert b.tolist() == [[0, 4], [4, 8], [8, 10]]
    assert block_bounds(0, 4).shape == (0, 2)
    with pytest.raises(ValueError, match="block_size"):
        block_bounds(10, 0)


def test_representatives_are_the_most_attended_tokens_and_their_mean_key():
    rng = np.random.default_rng(0)
    L, Hkv, Nh, N, D = 2, 2, 3, 11, 4
    kv = KVCache([rng.normal(size=(1, Hkv, Nh + N, D)).astype(np.float32) for _ in range(L)],
                 [rng.normal(size=(1, Hkv, Nh + N, D)).astype(np.float32) for _ in range(L)])
    importance = rng.random((L, 3, N))  # [L, H, N]: heads are summed
    bounds = block_bounds(N, 5)
    keys, tokens = representative_keys(kv, importance, Nh, bounds, reps=2)
    summed = importance.sum(1)
    for layer in range(L):
        for b, (s, e) in enumerate(bounds):
            want = sorted(range(s, e), key=lambda t: -summed[layer, t])[:2]
            assert tokens[layer, b, : len(want)].tolist() == want
            ref = np.mean([kv.keys[layer][0, :, Nh + t] for t in want], 0)  # [Hkv, D]
            np.testing.assert_allclose(keys[layer, :, b], ref, rtol=1e-6)
    assert (tokens[:, 2, 1:] == -1).all()  # the last block has one token


def _reference_scores(queries, keys, pairs):
    L, H, _ = queries.shape
    group = H // keys.shape[1]
    per_layer = {}
    for layer, head in pairs:
        for b in range(keys.shape[2]):
            per_layer.setdefault(layer, np.zeros(keys.shape[2]))[b] += sum(float(queries[layer, head, d]) * float(keys[layer, head // group, b, d])
                                                                           for d in range(queries.shape[2]))
    rows = []
    for layer in sorted(per_layer):
        row = per_layer[layer]
        sd = row.std()
        rows.append((row - row.mean()) / (sd if sd > 0 else 1.0))
    return np.mean(rows, 0)


@pytest.mark.parametrize("pairs", [[(0, 0), (0, 3), (2, 1)], [(layer, head) for layer in range(3) for head in range(4)]])
def test_block_scores_equal_the_numpy_reference(pairs):
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(3, 4, 8)).astype(np.float32)  # [L, H, D]
    keys = rng.normal(size=(3, 2, 6, 8)).astype(np.float32)  # [L, Hkv, NB, D]
    np.testing.assert_allclose(block_scores(queries, keys, pairs), _reference_scores(queries, keys, pairs), rtol=1e-5, atol=1e-6)
    raw = layer_scores(queries, keys, pairs)
    assert np.isnan(raw[1]).all() == (not any(layer == 1 for layer, _ in pairs))


def test_block_scores_follow_the_query():
    keys = np.zeros((1, 1, 3, 2), np.float32)
    keys[0, 0, :, 0] = [0.0, 5.0, 1.0]
    queries = np.array([[[1.0, 0.0]]], np.float32)
    assert int(np.argmax(block_scores(queries, keys, [(0, 0)]))) == 1
    with pytest.raises(ValueError, match="no scoring heads"):
        block_scores(queries, keys, [])


def test_kept_tokens_are_initial_local_and_the_best_blocks():
    bounds = block_bounds(20, 4)  # 5 blocks
    scores = np.array([9.0, 1.0, 3.0, 2.0, 8.0])
    keep, chosen = kept_tokens(scores, bounds, 20, count=2, initial=2, local=4)
    # block 0 is only partly covered by the initial tokens so it still competes; block 4 is wholly local
    assert chosen == [0, 2]
    want = np.zeros(20, bool)
    want[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]] = True
    assert (keep == want).all()
