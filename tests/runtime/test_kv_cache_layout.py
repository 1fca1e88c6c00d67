"""KVCache layouts: a shared-attention cache holds no keys for its shared layers."""

import numpy as np
import pytest

from steerc.errors import EngineError
from steerc.runtime import KVCache


def _cache(length=5, batch=2, keyless=(), seed=0, layers=4):
    rng = np.random.default_rng(seed)
    make = lambda: rng.standard_normal((batch, 2, length, 4)).astype(np.float32)  # noqa: E731
    return KVCache([None if i in keyless else make() for i in range(layers)], [make() for _ in range(layers)])


def test_flat_is_the_engine_inputs_and_from_flat_needs_the_layout():
    cache = _cache(keyless=(2, 3))
    assert cache.keyless == (2, 3) and "no keys for layers 2-3" in cache.layout
    flat = cache.flat()
    assert len(flat) == 6
    assert flat[4] is cache.values[2] and flat[5] is cache.values[3] and flat[0] is cache.keys[0]
    back = KVCache.from_flat(flat, (2, 3))
    assert back.keys[2] is None and back.keyless == (2, 3) and all(a is b for a, b in zip(back.flat(), flat))
    with pytest.raises(ValueError, match="do not fit the layout"):
        KVCache.from_flat(flat[:-1], (2, 3))
    full = _cache()
    assert KVCache.from_flat(full.flat()).keyless == () and len(full.flat()) == 8


def test_nbytes_counts_real_arrays():
    full, shared = _cache(length=7), _cache(length=7, keyless=(2, 3))
    per_array = 2 * 2 * 7 * 4 * 4
    assert full.nbytes == 8 * per_array and shared.nbytes == 6 * per_array


def test_operations_keep_the_layout():
    cache = _cache(length=7, keyless=(1, 3))
    parts = [cache.slice(0, 3), cache.slice(3)]
    joined = KVCache.concat(parts)
    assert joined.keyless == (1, 3) and all(np.array_equal(a, b) for a, b in zip(joined.flat(), cache.flat()))
    taken = cache.take(np.array([0, 2, 6]))
    assert taken.keyless == (1, 3) and taken.length == 3 and np.array_equal(taken.values[1], cache.values[1][:, :, [0, 2, 6]])
    rows = cache.rows([1])
    assert rows.batch == 1 and rows.keyless == (1, 3)
    empty = KVCache.empty(4, 2, 2, 4, keyless=(1, 3))
    assert empty.keyless == (1, 3) and empty.length == 0
    with pytest.raises(ValueError, match="different layouts"):
        KVCache.concat([cache, _cache(length=2)])


def test_save_load_records_and_checks_the_layout(tmp_path):
    cache = _cache(keyless=(2, 3))
    path = tmp_path / "c.safetensors"
    cache.save(path, {"context": "abc"})
    loaded, meta = KVCache.load(path)
    assert meta["keyless_layers"] == "2-3" and meta["context"] == "abc"
    assert loaded.keyless == (2, 3) and all(np.array_equal(a, b) for a, b in zip(loaded.flat(), cache.flat()))
    assert KVCache.load(path, keyless=(2, 3))[0].keyless == (2, 3)
    with pytest.raises(EngineError, match=r"layout shared attention \(no keys for layers 2-3\), expected full"):
        KVCache.load(path, keyless=())
    _cache().save(tmp_path / "full.safetensors")
    assert "keyless_layers" not in KVCache.load(tmp_path / "full.safetensors")[1]  # a full cache's file is as before
    with pytest.raises(EngineError, match="expected shared attention"):
        KVCache.load(tmp_path / "full.safetensors", keyless=(2, 3))


def test_check_layout_names_both_layouts():
    with pytest.raises(EngineError, match=r"the cache is full .* expects shared attention \(no keys for layers 2-3\)"):
        _cache().check_layout((2, 3))
    _cache(keyless=(2, 3)).check_layout((2, 3))


def test_inconsistent_arrays_are_rejected():
    a = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="only keys may be None"):
        KVCache([a, a], [a, None])
    with pytest.raises(ValueError, match="one shape"):
        KVCache([a, None], [a, np.zeros((1, 2, 4, 4), np.float32)])
