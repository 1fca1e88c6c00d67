"""Moving cached keys to another position equals computing them there (tiny random models)."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from steerc.runtime.kv_cache import KVCache
from steerc.runtime.rope_shift import RopeShift, RopeShiftError, rope_shift_from_config


def _kv(model, ids, start: int) -> KVCache:
    """The HF model's KV of ``ids`` at positions ``start, start + 1, ...`` (fp32)."""
    positions = torch.arange(start, start + ids.shape[1])[None]
    with torch.no_grad():
        cache = model(ids, position_ids=positions, use_cache=True).past_key_values
    return KVCache([layer.keys.numpy() for layer in cache.layers], [layer.values.numpy() for layer in cache.layers])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "gemma3"])
@pytest.mark.parametrize("delta", [37, -5])
def test_moved_keys_equal_keys_computed_there(arch, delta):
    # Shifting every position by delta keeps every relative distance, so only the rotation of the keys changes.
    model = tiny_model(arch)
    if getattr(model.config, "sliding_window", None):
        model.config.sliding_window = 64  # the tiny configs' window of 4 would drop keys from the cache
    ids = torch.randint(0, 128, (1, 12))
    shift = rope_shift_from_config(model.config)
    here, there = _kv(model, ids, 10), _kv(model, ids, 10 + delta)
    moved = shift.shift(here, delta)
    for a, b, v, w in zip(moved.keys, there.keys, moved.values, there.values):
        scale = np.abs(b).max()
        assert np.abs(a - b).max() <= 2e-5 * max(scale, 1.0)
        np.testing.assert_allclose(v, w, atol=1e-5)
    assert np.abs(here.keys[0] - there.keys[0]).max() > 1e-3  # the rotation matters: the test can fail


def test_gemma3_rotates_local_and_global_layers_with_their_own_theta():
    shift = rope_shift_from_config(tiny_model("gemma3").config)
    assert not np.allclose(shift.inv_freq[0], shift.inv_freq[1])  # sliding (local base) and full layers differ
    assert shift.window == 4
    with pytest.raises(RopeShiftError, match="sliding-window layers see only the last 4"):
        shift.check_window(5)
    shift.check_window(4)


def test_refusals():
    with pytest.raises(RopeShiftError, match="no rotary position embedding"):
        rope_shift_from_config(tiny_model("gpt2").config)
    config = tiny_model("llama").config
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(RopeShiftError, match="'dynamic' rotary scaling"):
        rope_shift_from_config(config)
    with pytest.raises(ValueError, match="window"):
        RopeShift((np.ones(2),), window=0)


def test_shift_keeps_keyless_layers_and_dtype():
    kv = KVCache([None, np.ones((1, 2, 3, 8), np.float16)], [np.ones((1, 2, 3, 8), np.float16)] * 2)
    moved = RopeShift((np.ones(4), np.ones(4))).shift(kv, 3)
    assert moved.keys[0] is None and moved.keys[1].dtype == np.float16 and moved.values[0] is kv.values[0]
    back = RopeShift((np.ones(4), np.ones(4))).shift(moved, -3)
    np.testing.assert_allclose(back.keys[1], kv.keys[1], atol=2e-3)
