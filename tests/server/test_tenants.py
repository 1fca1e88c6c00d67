"""Tenants (`steerc serve --api-keys FILE`): each tenant's contexts apart, another tenant's id a
404, key-file mistakes one-line start-up errors."""

import pytest
from conftest import Server, tenant_key_file

from steerc.errors import SteercError
from steerc.server.tenants import load_key_file
from test_api import CONTEXT

KEY_A, KEY_B = "key-of-team-a-0001", "key-of-team-b-0002"


@pytest.mark.parametrize("text, message", [
    (f"team-a {KEY_A}\nteam-b {KEY_A}\n", "also on line 1"),
    (f"{KEY_A}\n", "a key without a tenant"),
    ("team-a short\n", "shorter than 8 characters"),
    (f"team/a {KEY_A}\n", "is not 1-64 letters"),
    (f"team-a {KEY_A} extra\n", "3 fields"),
    ("# only a comment\n\n", "no keys in it"),
])
def test_key_file_mistakes_are_one_line_errors_naming_the_line(tmp_path, text, message):
    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(SteercError, match=message) as info:
        load_key_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_key_file_reads_comments_and_several_keys_per_tenant(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"\ufeff# teams\nteam-a {KEY_A}  # the first\nteam-a {KEY_A}x\n\nteam-b {KEY_B}\n")
    assert load_key_file(path) == {KEY_A: "team-a", KEY_A + "x": "team-a", KEY_B: "team-b"}
    path.write_bytes(b"team-a \xff\xfe\xfa")
    with pytest.raises(SteercError, match="not UTF-8"):
        load_key_file(path)


def test_a_bad_key_file_stops_the_server_with_one_line(tiny_text_engine, tmp_path):
    with pytest.raises(RuntimeError, match="shorter than 8 characters"):
        Server(tiny_text_engine, tmp_path, "--api-keys", tenant_key_file(tmp_path, {"team-a": "short"}), api_key=None)


@pytest.fixture(scope="module")
def two_tenants(tiny_text_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    srv = Server(tiny_text_engine, tmp, "--api-keys", tenant_key_file(tmp, {"team-a": KEY_A, "team-b": KEY_B}), "--kv-store", str(tmp / "store"), api_key=None)
    yield srv
    srv.stop()


def test_tenants_get_their_own_ids_and_cannot_read_or_delete_each_others(two_tenants):
    srv = two_tenants
    a = srv.client(KEY_A)
    b = srv.client(KEY_B)
    with a, b:
        id_a = a.post("/v1/contexts", json={"context": CONTEXT}).json()["id"]
        id_b = b.post("/v1/contexts", json={"context": CONTEXT}).json()["id"]
        assert id_a != id_b  # the same text: two ids, two entries
        assert a.get(f"/v1/contexts/{id_a}").status_code == 200 and b.get(f"/v1/contexts/{id_b}").status_code == 200
        for client, other in ((b, id_a), (a, id_b)):
            assert client.get(f"/v1/contexts/{other}").status_code == 404  # 404, not 403: existence does not leak
            assert client.delete(f"/v1/contexts/{other}").status_code == 404
            r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Who won?"}], "max_tokens": 3, "steer": {"context_id": other}})
            assert r.status_code == 404
        assert a.get(f"/v1/contexts/{id_a}").json()["cached"] is True  # b's attempts changed nothing
        ask = {"messages": [{"role": "user", "content": "Who won?"}], "max_tokens": 5, "temperature": 0}
        first_a = a.post("/v1/chat/completions", json={**ask, "steer": {"context": CONTEXT + " (inline)"}}).json()
        first_b = b.post("/v1/chat/completions", json={**ask, "steer": {"context": CONTEXT + " (inline)"}}).json()
        assert first_a["steer"]["cache"] == "miss" and first_b["steer"]["cache"] == "miss"  # b does not hit a's entry
        assert first_a["choices"][0]["message"]["content"] == first_b["choices"][0]["message"]["content"]
        assert b.delete(f"/v1/contexts/{id_b}").status_code == 200
        assert a.get(f"/v1/contexts/{id_a}").json()["cached"] is True
    with srv.client("not-a-key-at-all") as nobody:
        assert nobody.get(f"/v1/contexts/{id_a}").status_code == 401


def test_each_tenant_lists_only_its_own_contexts_page_by_page(two_tenants):
    srv = two_tenants
    a = srv.client(KEY_A)
    b = srv.client(KEY_B)
    with a, b:
        before = {c["id"] for c in a.get("/v1/contexts", params={"limit": 100}).json()["data"]}
        made = [a.post("/v1/contexts", json={"context": f"{CONTEXT} (listed {i})", **({"pin": True, "ttl_s": 3600} if i == 0 else {})}).json() for i in range(3)]
        b_id = b.post("/v1/contexts", json={"context": f"{CONTEXT} (b's own)"}).json()["id"]
        pages, after = [], None
        while True:
            page = a.get("/v1/contexts", params={"limit": 2, **({"after": after} if after else {})}).json()
            assert page["object"] == "list" and len(page["data"]) <= 2
            pages.append(page)
            if not page["has_more"]:
                break
            after = page["last_id"]
        listed = [c for p in pages for c in p["data"]]
        ids = [c["id"] for c in listed]
        assert len(ids) == len(set(ids)) and set(ids) == before | {m["id"] for m in made}  # every one of a's, once; none of b's
        assert b_id not in ids
        created = [c["created"] for c in listed]
        assert created == sorted(created, reverse=True)  # newest first
        first = next(c for c in listed if c["id"] == made[0]["id"])
        assert first["pinned"] is True and 3500 <= first["ttl_left_s"] <= 3600 and first["cached"] is True
        assert first["bytes"] > 0 and first["last_used"] >= first["created"]
        assert {"id", "created", "last_used", "bytes", "pinned", "ttl_left_s", "cached"} <= set(first)
        assert [c["id"] for c in b.get("/v1/contexts").json()["data"]] == [b_id]
        assert a.delete(f"/v1/contexts/{made[1]['id']}").status_code == 200
        assert made[1]["id"] not in {c["id"] for c in a.get("/v1/contexts", params={"limit": 100}).json()["data"]}
        r = a.get("/v1/contexts", params={"after": b_id})  # another tenant's id is no cursor of a's
        assert r.status_code == 404 and r.json()["error"]["param"] == "after"
        for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
            r = a.get("/v1/contexts", params=bad)
            assert r.status_code in (400, 422) and "limit" in r.text
