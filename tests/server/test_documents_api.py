"""Documents over HTTP: POST /v1/documents, and requests whose context is assembled from stored
document KVs (`steer.documents`), per tenant, with bad input refused."""

import pytest
from conftest import Server, tenant_key_file

from test_api import CONTEXT

DOCS = [f"Document {i}: " + CONTEXT[i * 150 : i * 150 + 200] for i in range(4)]
KEY_A, KEY_B = "docs-team-a-key-01", "docs-team-b-key-02"
ASK = {"max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def srv(tiny_text_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("documents")
    s = Server(tiny_text_engine, tmp, "--api-keys", tenant_key_file(tmp, {"team-a": KEY_A, "team-b": KEY_B}), "--kv-store", str(tmp / "store"), api_key=None)
    yield s
    s.stop()



def _ask(client, documents, **steer):
    r = client.post("/v1/chat/completions", json={**ASK, "messages": [{"role": "user", "content": "Who won?"}], "steer": {"documents": documents, **steer}})
    assert r.status_code == 200, r.text
    return r.json()


def test_registered_documents_are_reused_in_any_mix_and_order(srv):
    with srv.client(KEY_A) as a:
        made = [a.post("/v1/documents", json={"document": d}).json() for d in DOCS[:3]]
        assert all(m["object"] == "document" and m["id"].startswith("doc-") and m["cache"] == "miss" and m["tokens"] > 0 for m in made)
        again = a.post("/v1/documents", json={"document": DOCS[0]}).json()
        assert again["id"] == made[0]["id"] and again["cache"] != "miss"  # one KV per distinct document
        first = _ask(a, [made[0]["id"], made[1]["id"]])
        info = first["steer"]["documents"]
        assert first["steer"]["cache"] == "documents" and info["documents"] == 2 and info["computed_documents"] == 0
        assert info["reused_tokens"] + info["recomputed_tokens"] == info["context_tokens"] == made[0]["tokens"] + made[1]["tokens"]
        assert first["steer"]["context_prefill_tokens"] == info["recomputed_tokens"] > 0  # only the recomputed fraction was prefilled
        # Another mix, another order, one new inline document: only it and the recomputed fraction are prefilled.
        second = _ask(a, [made[2]["id"], DOCS[3], made[0]["id"]])
        info = second["steer"]["documents"]
        assert info["documents"] == 3 and info["computed_documents"] == 1 and info["tiers"][0] != "miss" and info["tiers"][1] == "miss"
        assert second["steer"]["context_prefill_tokens"] == info["recomputed_tokens"] + info["computed_tokens"]
        assert info["computed_tokens"] < info["context_tokens"] / 2
        third = _ask(a, [DOCS[3], made[2]["id"]])  # the inline one is stored now too
        assert third["steer"]["documents"]["computed_documents"] == 0
        exact = _ask(a, [made[0]["id"], made[1]["id"]], recompute=1)
        info = exact["steer"]["documents"]  # R = 1: every token but the first document's (exact as stored: right behind the head) is prefilled again
        assert info["reused_tokens"] == made[0]["tokens"] and info["recomputed_tokens"] == made[1]["tokens"]
        for rule in ("suffix", "question"):  # steer.recompute_rule: which tokens (the same budget), reported back
            ruled = _ask(a, [made[0]["id"], made[1]["id"], made[2]["id"]], recompute=0.5, recompute_rule=rule)["steer"]["documents"]
            assert ruled["recompute_rule"] == rule and 0 < ruled["recomputed_tokens"] < made[1]["tokens"] + made[2]["tokens"]
            assert (ruled["rank_s"] > 0) == (rule == "question")
        got = a.get(f"/v1/documents/{made[1]['id']}").json()
        assert got["tokens"] == made[1]["tokens"] and got["cached"] is True and got["document_preview"] == DOCS[1][:200]
        assert a.delete(f"/v1/documents/{made[1]['id']}").json()["deleted"] is True
        assert a.get(f"/v1/documents/{made[1]['id']}").status_code == 404
        gone = a.post("/v1/chat/completions", json={**ASK, "messages": [{"role": "user", "content": "Who won?"}], "steer": {"documents": [made[1]["id"]]}})
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "steer.documents"


def test_another_tenants_document_id_is_unknown(srv):
    with srv.client(KEY_A) as a, srv.client(KEY_B) as b:
        mine = a.post("/v1/documents", json={"document": DOCS[2] + " (tenant)"}).json()
        theirs = b.post("/v1/documents", json={"document": DOCS[2] + " (tenant)"}).json()
        assert mine["id"] != theirs["id"] and theirs["cache"] == "miss"  # the same text: two ids, two KVs
        assert b.get(f"/v1/documents/{mine['id']}").status_code == 404
        assert b.delete(f"/v1/documents/{mine['id']}").status_code == 404
        r = b.post("/v1/chat/completions", json={**ASK, "messages": [{"role": "user", "content": "Who won?"}], "steer": {"documents": [mine["id"]]}})
        assert r.status_code == 404
        assert a.get(f"/v1/documents/{mine['id']}").status_code == 200


@pytest.mark.parametrize("steer, status, words", [
    ({"documents": []}, 400, "documents"),
    ({"documents": ["   "]}, 400, "empty"),
    ({"documents": ["a text"], "context": "another"}, 400, "exactly one"),
    ({"documents": ["a text"], "recompute": 1.5}, 400, "recompute"),
    ({"context": "a text", "recompute": 0.5}, 400, "steer.documents only"),
    ({"context": "a text", "recompute_rule": "suffix"}, 400, "steer.documents only"),
    ({"documents": ["a text"], "recompute_rule": "middle"}, 400, "recompute_rule"),
    ({"documents": ["doc-" + "0" * 64]}, 404, "unknown document id"),
])
def test_bad_document_requests_are_refused_clearly(srv, steer, status, words):
    with srv.client(KEY_A) as a:
        r = a.post("/v1/chat/completions", json={**ASK, "messages": [{"role": "user", "content": "Who won?"}], "steer": steer})
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


def test_a_document_longer_than_the_engine_is_refused(srv):
    with srv.client(KEY_A) as a:
        r = a.post("/v1/documents", json={"document": "word " * 2000})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert a.post("/v1/documents", json={"document": ""}).status_code == 400
        assert a.get("/v1/documents/doc-xyz").status_code == 404
