"""KVs kept at rest as fp16 or int8 (steerc.steering.kv_codec): round-trip error within the stated
bound, bytes, entries of another scheme read correctly, and a prepared context answers the same
on its first request (a miss) as on every later one (a hit)."""

from pathlib import Path

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.kv_cache import KVCache
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.kv_codec import decode, encode
from steerc.steering.stored_kv import kv_entry, kv_from_entry, load_kv, save_kv
from steerc.stores import DiskStore, MemoryStore, entry_to_bytes, open_store

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
KEY = "ab" * 32


def _kv(seed: int = 0, keyless=(), positions: int = 37, dim: int = 16) -> KVCache:
    rng = np.random.default_rng(seed)
    make = lambda: (rng.standard_normal((1, 2, positions, dim)) * rng.uniform(0.1, 30, (1, 2, positions, 1))).astype(np.float32)  # noqa: E731
    return KVCache([None if i in keyless else make() for i in range(3)], [make() for _ in range(3)])


@pytest.mark.parametrize("scheme", ["engine", "fp16", "int8"])
def test_round_trip_is_within_the_stated_error(scheme):
    kv = _kv()
    back = kv_from_entry(KEY, kv_entry(kv, scheme))
    for a, b in zip(kv.flat(), back.flat()):
        assert b.dtype == np.float32 and b.shape == a.shape
        if scheme == "engine":
            np.testing.assert_array_equal(a, b)
        elif scheme == "fp16":
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6)
        else:
            bound = np.abs(a).max(-1, keepdims=True) / 254 * 1.002 + 1e-7  # half a step of each vector (the fp16 scale rounds by 1e-3 at most)
            assert (np.abs(b - a) <= bound).all()


def test_keyless_layouts_and_zero_vectors_survive_int8():
    kv = _kv(1, keyless=(1,))
    kv.values[0][0, 0, 3] = 0.0
    back = kv_from_entry(KEY, kv_entry(kv, "int8"))
    assert back.keyless == (1,) and back.keys[1] is None and np.all(back.values[0][0, 0, 3] == 0)


def test_bytes_at_rest():
    kv = _kv(positions=512, dim=64)
    size = {s: len(entry_to_bytes(KEY, kv_entry(kv, s))) for s in ("engine", "fp16", "int8")}
    assert size["fp16"] <= 0.51 * size["engine"]
    assert size["int8"] <= 0.27 * size["engine"]  # one byte per value plus one fp16 scale per 64 values


def test_an_entry_of_another_scheme_is_read_correctly_and_a_broken_record_is_a_miss(tmp_path):
    kv = _kv()
    writer = DiskStore(tmp_path)
    writer.kv_scheme = "int8"
    save_kv(writer, KEY, kv)
    reader = DiskStore(tmp_path)  # a server with the default --kv-store-dtype engine
    back, tier = load_kv(reader, KEY)
    a = kv.values[0]
    assert tier == "disk" and (np.abs(back.values[0] - a) <= np.abs(a).max(-1, keepdims=True) / 254 * 1.002 + 1e-7).all()
    assert not np.array_equal(back.values[0], a)  # it really was int8 at rest
    tensors, _ = encode(list(kv.flat()), "int8")
    reader.put(KEY, type(kv_entry(kv))(tensors, {"kind": "kv", "length": 37, "keyless": [], "codec": {"scheme": "int4", "dtype": "float32"}}))
    assert load_kv(reader, KEY) == (None, "miss") and KEY not in reader  # an unknown scheme: dropped, recomputed


def test_an_old_entry_without_a_codec_record_is_read_as_it_is():
    kv = _kv()
    old = kv_entry(kv)
    del old.meta["codec"]
    np.testing.assert_array_equal(kv_from_entry(KEY, old).values[2], kv.values[2])
    assert decode(old.tensors, None)[0] is old.tensors["kv.0"]


def test_fp16_keeps_a_kv_past_its_range_as_it_is():
    kv = _kv()
    kv.values[0][0, 0, 0, 0] = 1e6
    entry = kv_entry(kv, "fp16")
    assert entry.meta["codec"]["scheme"] == "engine"
    np.testing.assert_array_equal(kv_from_entry(KEY, entry).values[0], kv.values[0])


def test_unknown_scheme_is_refused():
    with pytest.raises(Exception, match="one of engine, fp16, int8"):
        open_store("memory", kv_scheme="int3")


@pytest.mark.parametrize("method", ["query", "llmsteer"])
def test_the_first_answer_equals_every_later_one_with_a_compressed_store(tiny_text_engine, method):
    engine = Engine.load(tiny_text_engine, threads=1)
    store = MemoryStore(1 << 30)
    store.kv_scheme = "int8"
    config = SteerConfig(method=method, **({"top_k": 0.3} if method == "llmsteer" else {}))
    first = Steerer(engine, config, store).answer(CONTEXT, "Which team won Super Bowl 50?", max_new_tokens=8)
    again = Steerer(engine, config, store).answer(CONTEXT, "Which team won Super Bowl 50?", max_new_tokens=8)
    assert first.cache == "miss" and again.cache == "memory"
    assert again.token_ids == first.token_ids
    stored = [store.get(k) for k in list(store._entries)]  # noqa: SLF001
    assert any(e.meta.get("kind") == "kv" and e.meta["codec"]["scheme"] == "int8" for e in stored)
