"""An in-process server on a budgeted disk store and on a budgeted memory store: a registered
document's KV is held by its record, so a stream of other documents evicts the inline ones and
keeps it; an evicted or missing document KV is computed again on its next use with the same
answer (and held again); DELETE removes the KV with its last holder."""

import hashlib

import pytest
from fastapi.testclient import TestClient

from steerc.runtime.engine import Engine
from steerc.server.app import create_app
from steerc.server.settings import ServerSettings
from steerc.stores import DiskStore, MemoryStore, TieredStore

from test_api import CONTEXT

REGISTERED = "Document 0: " + CONTEXT[:220]
INLINE = "Document 1: " + CONTEXT[220:440]
ASK = {"max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": "Who won?"}]}


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine)


def _store(kind: str, tmp_path):
    if kind == "disk":
        disk = DiskStore(tmp_path / "store", max_bytes=1 << 30)
        return TieredStore(MemoryStore(0), disk), disk  # every entry on disk: the budget is the disk's
    memory = MemoryStore(1 << 30)
    return memory, memory


def _ask(client, documents: list[str]) -> tuple[str, list[str]]:
    r = client.post("/v1/chat/completions", json={**ASK, "steer": {"documents": documents, "recompute": 0.25}})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"], r.json()["steer"]["documents"]["tiers"]


def _holders(store, target: str) -> int:
    probe = hashlib.sha256(b"probe").hexdigest()
    store.add_ref(target, probe)
    return store.drop_ref(target, probe)


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_a_budget_keeps_registered_documents_and_an_evicted_one_is_computed_again_alike(engine, tmp_path, kind):
    store, budgeted = _store(kind, tmp_path)
    app = create_app(engine, ServerSettings(kv_store_dtype="engine"), store)
    with TestClient(app) as client:
        made = client.post("/v1/documents", json={"document": REGISTERED}).json()
        kv_key = app.state.steerc.service.documents(None).get(made["id"])["kv_key"]
        assert _holders(budgeted, kv_key) == 1
        again = client.post("/v1/documents", json={"document": REGISTERED}).json()
        assert again["id"] == made["id"] and again["cache"] != "miss" and _holders(budgeted, kv_key) == 1  # one mark, however often registered
        registered_answer, tiers = _ask(client, [made["id"]])
        inline_answer, tiers = _ask(client, [INLINE])
        assert tiers == ["miss"]
        one_document = budgeted.get(kv_key).nbytes
        budgeted.max_bytes = budgeted.bytes_used + one_document  # room for one more document KV beside what is there
        for i in range(4):  # a stream of other inline documents, each stored and nobody's
            _ask(client, [f"Document {i + 2}: " + CONTEXT[300 + 60 * i : 500 + 60 * i]])
            assert budgeted.bytes_used <= budgeted.max_bytes
        assert budgeted.stats.evictions > 0
        assert client.get(f"/v1/documents/{made['id']}").json()["cached"] is True  # held by its record: kept
        assert _ask(client, [made["id"]]) == (registered_answer, [tiers_of(kind)])
        assert _ask(client, [INLINE]) == (inline_answer, ["miss"])  # evicted: computed again, the same answer

        budgeted.delete(kv_key)  # a registered document's KV gone anyway (deleted behind the server's back)
        assert client.get(f"/v1/documents/{made['id']}").json()["cached"] is False
        assert _ask(client, [made["id"]]) == (registered_answer, ["miss"])
        assert client.get(f"/v1/documents/{made['id']}").json()["cached"] is True and _holders(budgeted, kv_key) == 1  # the mark holds the new copy

        assert client.delete(f"/v1/documents/{made['id']}").json()["deleted"] is True
        assert kv_key not in budgeted and _holders(budgeted, kv_key) == 0  # its last holder went: so did the KV


def tiers_of(kind: str) -> str:
    return "disk" if kind == "disk" else "memory"
