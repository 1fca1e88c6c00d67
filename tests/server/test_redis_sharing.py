"""Two `steerc serve` processes sharing one real redis-server reuse each other's contexts."""

import concurrent.futures as cf
import re
import threading

import pytest
from conftest import Server

from test_api import CONTEXT, QUESTION


@pytest.fixture(scope="module")
def pair(tiny_text_engine, redis_server, tmp_path_factory):
    servers = [Server(tiny_text_engine, tmp_path_factory.mktemp(f"redis-serve-{i}"), "--kv-store", redis_server.url) for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def _ask(server, context_id: str) -> dict:
    with server.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0,
                                                 "steer": {"context_id": context_id}})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_context_registered_on_one_server_is_reused_by_the_other(pair):
    a, b = pair
    with a.client() as c:
        info = c.post("/v1/contexts", json={"context": CONTEXT + " (shared)"}).json()
    assert info["cache"] == "miss" and info["context_prefill_tokens"] > 0
    on_b = _ask(b, info["id"])
    assert on_b["steer"]["cache"] == "redis" and on_b["steer"]["context_prefill_tokens"] == 0  # fetched from Redis, not prefilled
    on_a = _ask(a, info["id"])
    assert on_a["steer"]["cache"] == "memory" and on_a["choices"] == on_b["choices"]
    with b.client() as c:
        assert c.get(f"/v1/contexts/{info['id']}").json()["context_tokens"] == info["context_tokens"]
        again = c.post("/v1/contexts", json={"context": CONTEXT + " (shared)"}).json()
    assert again["id"] == info["id"] and again["cache"] == "memory" and again["context_prefill_tokens"] == 0  # b holds it since its first use


def test_a_delete_on_one_server_is_seen_by_the_other(pair):
    a, b = pair
    with a.client() as c:
        info = c.post("/v1/contexts", json={"context": CONTEXT + " (deleted)"}).json()
    _ask(a, info["id"])  # now also in a's memory tier
    with b.client() as c:
        assert c.delete(f"/v1/contexts/{info['id']}").json()["deleted"]
    with a.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "steer": {"context_id": info["id"]}})
        assert r.status_code == 404
        inline = c.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 2, "steer": {"context": CONTEXT + " (deleted)"}}).json()
    assert inline["steer"]["cache"] == "miss"  # a's memory copy was not served after the delete


def test_both_servers_asked_for_one_new_context_prepare_it_once(pair):
    """The Redis lock makes the second server wait for the first one's preparation."""
    barrier = threading.Barrier(4)

    def register(server):
        with server.client() as c:
            barrier.wait()
            return c.post("/v1/contexts", json={"context": CONTEXT + " (raced)"}).json()

    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(register, [pair[0], pair[1], pair[0], pair[1]]))
    assert len({r["id"] for r in results}) == 1
    prefilled = [r["context_prefill_tokens"] for r in results]
    assert sorted(prefilled)[:3] == [0, 0, 0] and max(prefilled) > 0
    assert sum(r["cache"] == "miss" for r in results) == 1


def _stored_kvs(url: str) -> set[str]:
    """The KV entries in the Redis store (keys of kind ``kv`` under the servers' prefix)."""
    from steerc.stores.redis import RedisStore

    store = RedisStore(url)
    names = [n.decode() for n in store.client.scan_iter(match=store.prefix + "*")]
    keys = [n[len(store.prefix) :] for n in names if re.fullmatch(re.escape(store.prefix) + "[0-9a-f]{64}", n)]
    return {k for k in keys if (entry := store.get(k)) is not None and entry.meta.get("kind") == "kv"}


def test_two_servers_share_the_one_kv_of_a_context_and_delete_it_with_its_last_holder(pair, redis_server):
    a, b = pair
    text = CONTEXT + " (one KV)"
    before = _stored_kvs(redis_server.url)
    with a.client() as c:
        on_a = c.post("/v1/contexts", json={"context": text}).json()  # the default method
    with b.client() as c:
        on_b = c.post("/v1/contexts", json={"context": text, "method": "llmsteer"}).json()
    assert on_a["cache"] == "miss" and on_b["cache"] == "miss" and on_a["id"] != on_b["id"]
    new = _stored_kvs(redis_server.url) - before
    assert len(new) == 1  # two methods, two servers: one KV
    with a.client() as c:
        assert c.delete(f"/v1/contexts/{on_a['id']}").json()["deleted"]
    assert new <= _stored_kvs(redis_server.url)  # b's llmsteer entry still uses it
    assert _ask(a, on_b["id"])["steer"]["cache"] in ("redis", "memory")
    with b.client() as c:
        assert c.delete(f"/v1/contexts/{on_b['id']}").json()["deleted"]
    assert not new & _stored_kvs(redis_server.url)  # the last holder is gone, and so is the KV
