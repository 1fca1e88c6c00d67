"""One copy of each KV in the context store (steerc.steering.stored_kv, .prepared): entries of one context
share their KV, deletion keeps it while another entry uses it, a missing or corrupt KV is
recomputed, the memory tier counts it once, and entries of the earlier format are still read."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.keys import kv_key, plain_key
from steerc.steering.prepared import delete_prepared, load_prepared
from steerc.stores import DiskStore, MemoryStore, StoredContext, TieredStore

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
QUESTION = "Which team won Super Bowl 50?"
METHODS = {"query": {}, "llmsteer": {"top_k": 0.3}, "pasta": {"highlights": ((0, 60),)}}


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def _answer(engine, store, method: str, **fields):
    s = Steerer(engine, SteerConfig(method=method, **{**METHODS.get(method, {}), **fields}), store)
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=4)
    return answer, s.last_context[0]


def _kv_entries(store) -> list[str]:
    return [k for k in list(store._entries) if store.get(k).meta.get("kind") == "kv"]  # noqa: SLF001


@pytest.mark.parametrize("second", ["llmsteer", "pasta"])
def test_two_methods_on_one_context_store_one_kv_and_answer_as_without_sharing(engine, second):
    alone = {m: _answer(engine, None, m)[0].token_ids for m in ("query", second)}  # each method computes its own KV, as entries held it before
    store = MemoryStore(1 << 30)
    first, prepared_q = _answer(engine, store, "query")
    other, prepared_o = _answer(engine, store, second)
    assert first.token_ids == alone["query"] and other.token_ids == alone[second]
    assert _kv_entries(store) == [prepared_q.kv_key] and prepared_o.kv_key == prepared_q.kv_key
    assert all(n.startswith("kv.") for n in store.get(prepared_q.kv_key).tensors)
    assert not any(n.startswith("kv.") for k in list(store._entries) if k != prepared_q.kv_key for n in store.get(k).tensors)  # noqa: SLF001
    for method in ("query", second):  # reused: both hit, both answer as before
        again, _ = _answer(engine, store, method)
        assert again.cache == "memory" and again.token_ids == alone[method]


def test_a_steered_prefill_stores_its_own_kv(engine):
    store = MemoryStore(1 << 30)
    _, plain = _answer(engine, store, "llmsteer")
    _, both = _answer(engine, store, "llmsteer", steer_at="both", layers=(0,))  # layer 0's bias changes layer 1's KV
    assert both.kv_key != plain.kv_key and set(_kv_entries(store)) == {plain.kv_key, both.kv_key}
    assert not all(np.array_equal(a, b) for a, b in zip(both.kv.flat(), plain.kv.flat()))
    head = both.head_ids
    assert both.kv_key == kv_key(engine.engine_id, head, both.context_ids, both.bias) and plain.kv_key == kv_key(engine.engine_id, head, both.context_ids)


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_deleting_entries_keeps_the_kv_until_its_last_holder_goes(engine, tmp_path, kind):
    store = MemoryStore(1 << 30) if kind == "memory" else TieredStore(MemoryStore(1 << 30), DiskStore(tmp_path))
    _, llmsteer = _answer(engine, store, "llmsteer")
    _, pasta = _answer(engine, store, "pasta")
    plain = plain_key(engine, llmsteer.head_ids, llmsteer.context_ids)
    shared = llmsteer.kv_key
    assert pasta.kv_key == shared and shared in store
    assert delete_prepared(store, llmsteer.key) and llmsteer.key not in store
    assert shared in store and load_prepared(store, pasta.key)[0] is not None  # pasta and the plain entry still use it
    assert delete_prepared(store, plain) and shared in store
    assert delete_prepared(store, pasta.key)  # the last holder
    assert shared not in store and pasta.key not in store
    assert not delete_prepared(store, pasta.key)  # gone already
    if kind == "disk":
        assert not list(tmp_path.glob("refs/*/*"))  # no reference marks left


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_kv_behind_a_valid_entry_is_recomputed_and_rewritten(engine, tmp_path, damage):
    _, good = _answer(engine, DiskStore(tmp_path), "llmsteer")
    want = _answer(engine, None, "llmsteer")[0].token_ids
    path = DiskStore(tmp_path).path(good.kv_key)
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    store = DiskStore(tmp_path)
    assert store.get(good.key) is not None  # the entry itself is valid
    again, prepared = _answer(engine, store, "llmsteer")
    assert again.cache == "miss" and again.token_ids == want
    assert store.stats.corrupt == (damage == "corrupt")
    assert path.is_file() and prepared.kv_key == good.kv_key  # rewritten
    third, _ = _answer(engine, DiskStore(tmp_path), "llmsteer")
    assert third.cache == "disk" and third.token_ids == want


def test_the_memory_budget_counts_the_kv_once(engine):
    store = MemoryStore(1 << 30)
    for method in ("query", "none", "llmsteer", "pasta"):
        _, prepared = _answer(engine, store, method)
    kv_bytes = store.get(prepared.kv_key).nbytes
    assert kv_bytes >= prepared.kv.nbytes and store.bytes_used < kv_bytes + prepared.kv.nbytes // 2  # once (a second copy would double it)
    assert store.bytes_used == sum(store.get(k).nbytes for k in list(store._entries))  # noqa: SLF001
    # A budget that holds one KV and the small entries, not two KVs: everything stays, nothing is evicted.
    tight = MemoryStore(int(store.bytes_used * 1.05))
    for method in ("query", "none", "llmsteer", "pasta"):
        _answer(engine, tight, method)
    assert tight.stats.evictions == 0 and len(_kv_entries(tight)) == 1
    assert all(_answer(engine, tight, m)[0].cache == "memory" for m in ("query", "llmsteer", "pasta"))


def test_an_evicted_kv_makes_its_entries_miss_not_fail(engine):
    store = MemoryStore(1 << 30)
    first, prepared = _answer(engine, store, "llmsteer")
    store.delete(prepared.kv_key)  # what an LRU eviction (or another process's delete) leaves
    again, _ = _answer(engine, store, "llmsteer")
    assert again.cache == "miss" and again.token_ids == first.token_ids and prepared.kv_key in store


def _earlier_format(prepared) -> StoredContext:
    """The entry as steerc wrote it before the KV was stored apart: KV tensors inside, a bias array always."""
    tensors = {f"kv.{i}": a for i, a in enumerate(prepared.kv.flat())}
    tensors.update(head_ids=prepared.head_ids, context_ids=prepared.context_ids, selected=prepared.selected, importance=prepared.importance, bias=prepared.bias)
    return StoredContext(tensors, {"config": prepared.config.to_dict(), **prepared.meta})


def test_an_entry_of_the_earlier_format_is_still_read(engine, tmp_path):
    want, made = _answer(engine, None, "llmsteer")
    store = DiskStore(tmp_path)
    store.put(made.key, _earlier_format(made))
    plain = replace(made, key=plain_key(engine, made.head_ids, made.context_ids), config=SteerConfig(method="none"), bias=np.zeros_like(made.bias))
    store.put(plain.key, _earlier_format(plain))
    got, prepared = _answer(engine, DiskStore(tmp_path), "llmsteer")
    assert got.cache == "disk" and got.token_ids == want.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(prepared.kv.flat(), made.kv.flat()))
    # A new method on the context finds the plain KV in the earlier plain entry: no prefill.
    s = Steerer(engine, SteerConfig(method="pasta", **METHODS["pasta"]), DiskStore(tmp_path))
    prefilled = []
    s.answer(CONTEXT, QUESTION, max_new_tokens=1, progress=lambda stage, done, total: prefilled.append(stage))
    assert "prefill" not in prefilled
    assert delete_prepared(DiskStore(tmp_path), made.key) and not DiskStore(tmp_path).path(made.key).exists()


def test_a_failing_store_degrades_both_parts(engine):
    from steerc.stores.guarded import Backoff, GuardedStore
    from steps import FailingStore

    inner = FailingStore()
    guard = GuardedStore(inner, Backoff(clock=lambda: 0.0))
    want = _answer(engine, None, "llmsteer")[0].token_ids
    inner.down = True
    with guard.track() as used:
        got, prepared = _answer(engine, guard, "llmsteer")
    assert used.unavailable and got.token_ids == want and not inner._entries  # noqa: SLF001 (nothing written)
    inner.down = False
    guard.backoff.clock = lambda: 100.0  # the backoff interval is over
    _answer(engine, guard, "llmsteer")
    assert prepared.kv_key in inner and prepared.key in inner
    inner.down = True
    guard.backoff.clock = lambda: 1000.0
    assert guard.drop_ref(prepared.kv_key, prepared.key) == 1  # unknown during an outage: the KV is kept
    inner.down = False
    assert inner.drop_ref(prepared.kv_key, prepared.key) == 1  # the plain entry holds it too


@pytest.mark.parametrize("method", ["none", "pasta"])
def test_a_kv_that_outlived_its_plain_entry_is_used_without_a_prefill(engine, method):
    store = MemoryStore(1 << 30)
    _, made = _answer(engine, store, "llmsteer")
    store.delete(plain_key(engine, made.head_ids, made.context_ids))  # e.g. deleted with another registration; llmsteer still holds the KV
    s = Steerer(engine, SteerConfig(method=method, **METHODS.get(method, {})), store)
    stages = []
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=1, progress=lambda stage, done, total: stages.append(stage))
    assert "prefill" not in stages and answer.cache == "miss"
    assert plain_key(engine, made.head_ids, made.context_ids) in store and len(_kv_entries(store)) == 1
