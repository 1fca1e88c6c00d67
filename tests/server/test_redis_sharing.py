"""Two `steerc serve` processes sharing one real redis-server reuse each other's contexts."""

import concurrent.futures as cf
import re
import threading

import pytest
from conftest import Server, tenant_key_file

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


KEY_A, KEY_B = "redis-team-a-key-01", "redis-team-b-key-02"


@pytest.fixture(scope="module")
def tenant_pair(tiny_text_engine, redis_server, tmp_path_factory):
    """Two servers on one Redis, each with the same key file of two tenants."""
    tmp = tmp_path_factory.mktemp("redis-tenants")
    keys = tenant_key_file(tmp, {"team-a": KEY_A, "team-b": KEY_B})
    servers = [Server(tiny_text_engine, tmp_path_factory.mktemp(f"redis-tenant-{i}"), "--kv-store", redis_server.url, "--api-keys", keys, api_key=None)
               for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def test_tenants_stay_apart_across_two_servers_on_one_redis(tenant_pair):
    one, two = tenant_pair
    text = CONTEXT + " (tenants on Redis)"
    with one.client(KEY_A) as a1, two.client(KEY_A) as a2, two.client(KEY_B) as b2:
        made = a1.post("/v1/contexts", json={"context": text}).json()
        assert made["cache"] == "miss"
        assert a2.get(f"/v1/contexts/{made['id']}").json()["context_tokens"] == made["context_tokens"]  # the same tenant on the other server
        assert made["id"] in [c["id"] for c in a2.get("/v1/contexts").json()["data"]]
        assert b2.get(f"/v1/contexts/{made['id']}").status_code == 404  # the other tenant, on either server
        assert b2.delete(f"/v1/contexts/{made['id']}").status_code == 404
        assert made["id"] not in [c["id"] for c in b2.get("/v1/contexts").json()["data"]]
        ask = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0}
        assert b2.post("/v1/chat/completions", json={**ask, "steer": {"context_id": made["id"]}}).status_code == 404
        own_b = b2.post("/v1/contexts", json={"context": text}).json()
        assert own_b["id"] != made["id"] and own_b["cache"] == "miss"  # b's own copy: nothing of a's is hit
        reused = a2.post("/v1/chat/completions", json={**ask, "steer": {"context_id": made["id"]}}).json()
        assert reused["steer"]["cache"] == "redis" and reused["steer"]["context_prefill_tokens"] == 0
        assert a1.delete(f"/v1/contexts/{made['id']}").status_code == 200
        assert a2.get(f"/v1/contexts/{made['id']}").status_code == 404
        assert b2.get(f"/v1/contexts/{own_b['id']}").status_code == 200  # b's copy outlives a's delete


def test_a_registration_ttl_is_a_redis_expiry(tenant_pair, redis_server):
    """ttl_s maps to EXPIREAT on the record (and on the entries it pins): Redis removes them on
    time even if no server ever reads them again; the id is then 404 and leaves the listing."""
    import time

    import redis

    client = redis.Redis.from_url(redis_server.url)
    expiring_before = {n for n in client.scan_iter(match="steerc:ctx:*") if client.pttl(n) > 0}
    one, two = tenant_pair
    with one.client(KEY_A) as a1, two.client(KEY_A) as a2:
        made = a1.post("/v1/contexts", json={"context": CONTEXT + " (ttl on Redis)", "ttl_s": 2, "pin": True}).json()
        expiring = {n for n in client.scan_iter(match="steerc:ctx:*") if client.pttl(n) > 0} - expiring_before
        assert len(expiring) >= 2 and all(0 < client.pttl(n) <= 2000 for n in expiring)  # the record and its pinned entry
        assert made["id"] in [c["id"] for c in a2.get("/v1/contexts").json()["data"]]
        time.sleep(2.5)
        assert not any(client.exists(n) for n in expiring)  # Redis removed them by itself
        assert a2.get(f"/v1/contexts/{made['id']}").status_code == 404
        assert made["id"] not in [c["id"] for c in a2.get("/v1/contexts").json()["data"]]
