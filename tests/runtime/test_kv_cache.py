import numpy as np
import pytest

from steerc.errors import EngineError
from steerc.runtime import KVCache


def _cache(length=5, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda: rng.standard_normal((batch, 2, length, 4)).astype(np.float32)  # noqa: E731
    return KVCache([make() for _ in range(3)], [make() for _ in range(3)])


def test_save_load_is_bitwise(tmp_path):
    cache = _cache()
    cache.save(tmp_path / "c.safetensors", {"context": "abc"})
    loaded, meta = KVCache.load(tmp_path / "c.safetensors")
    assert meta["context"] == "abc"
    for a, b in zip(cache.flat(), loaded.flat()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left


def test_slice_and_concat_round_trip():
    cache = _cache(length=7)
    parts = [cache.slice(0, 3), cache.slice(3, 5), cache.slice(5)]
    assert [p.length for p in parts] == [3, 2, 2]
    joined = KVCache.concat(parts)
    assert all(np.array_equal(a, b) for a, b in zip(joined.flat(), cache.flat()))
    assert cache.rows([1]).batch == 1 and cache.nbytes == 2 * 3 * 2 * 2 * 7 * 4 * 4


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_refused(tmp_path, damage):
    path = tmp_path / "c.safetensors"
    _cache().save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00" * 64)
    with pytest.raises(EngineError, match="unreadable|not a steerc KV cache"):
        KVCache.load(path)


def test_inconsistent_arrays_are_rejected():
    a = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        KVCache([a, a], [a, np.zeros((1, 2, 4, 4), np.float32)])
    with pytest.raises(ValueError, match="as many"):
        KVCache([a], [a, a])
