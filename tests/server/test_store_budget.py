"""`steerc serve --kv-store DIR --kv-store-max-gb B`: the folder stays within B under a stream of
new contexts, a pinned context stays cached, evicted ones are prepared again, and the garbage
collector clears what a killed writer left before the server starts answering."""

import hashlib
import os
import time

import numpy as np
from conftest import Server

from steerc.stores import DiskStore, StoredContext
from test_api import CONTEXT

BUDGET_GB = 0.001  # 1.07 MB: about ten of the tiny engine's contexts


def _folder_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.glob("[0-9a-f][0-9a-f]/*.safetensors"))


def test_a_budgeted_store_stays_within_it_and_keeps_what_is_pinned(tiny_text_engine, tmp_path):
    root = tmp_path / "contexts"
    planted = DiskStore(root)  # what a writer killed between a KV and its holder leaves
    orphan = hashlib.sha256(b"orphan").hexdigest()
    planted.put(orphan, StoredContext({"k": np.zeros(16, np.float32)}, {"kind": "kv"}))
    old = time.time() - 7200
    os.utime(planted.path(orphan), (old, old))

    # KVs at the engine's dtype: the budget holds about ten contexts (int8, the default, would fit 24 and leave nothing evicted)
    srv = Server(tiny_text_engine, tmp_path, "--kv-store", str(root), "--kv-store-max-gb", str(BUDGET_GB), "--memory-store-mb", "0",
                 "--kv-store-dtype", "engine")
    try:
        assert srv.metric("steerc_store_gc_removed_total", kind="orphans") == 1 and orphan not in planted  # at start-up
        with srv.client() as c:
            pinned = c.post("/v1/contexts", json={"context": CONTEXT, "pin": True}).json()
            unpinned = c.post("/v1/contexts", json={"context": CONTEXT + " (not pinned)"}).json()
            assert pinned["pinned"] is True and unpinned["pinned"] is False
            ask = {"messages": [{"role": "user", "content": "Who won?"}], "max_tokens": 8, "temperature": 0}
            before = c.post("/v1/chat/completions", json={**ask, "steer": {"context_id": unpinned["id"]}}).json()["choices"][0]["message"]["content"]
            for i in range(24):  # a stream of new contexts, each prepared and stored
                r = c.post("/v1/chat/completions", json={**ask, "steer": {"context": f"{CONTEXT} [document {i}]"}})
                assert r.status_code == 200, r.text
                assert _folder_bytes(root) <= BUDGET_GB * (1 << 30)
            assert c.get(f"/v1/contexts/{pinned['id']}").json()["cached"] is True
            assert c.get(f"/v1/contexts/{unpinned['id']}").json()["cached"] is False  # evicted, its registration kept
            again = c.post("/v1/chat/completions", json={**ask, "steer": {"context_id": unpinned["id"]}}).json()
            assert again["choices"][0]["message"]["content"] == before  # prepared again: the same answer
            assert again["steer"]["cache"] == "miss"
            assert c.post("/v1/chat/completions", json={**ask, "steer": {"context_id": pinned["id"]}}).json()["steer"]["cache"] == "disk"
        assert srv.metric("steerc_store_evicted_entries", tier="disk") > 0
    finally:
        srv.stop()


def test_a_registration_with_a_ttl_expires_and_bad_ttls_are_refused(server):
    with server.client() as c:
        r = c.post("/v1/contexts", json={"context": CONTEXT + " (ttl test)", "ttl_s": 1})
        assert r.status_code == 200 and r.json()["ttl_left_s"] in (0, 1)
        context_id = r.json()["id"]
        assert c.get(f"/v1/contexts/{context_id}").status_code == 200
        time.sleep(1.2)
        gone = c.get(f"/v1/contexts/{context_id}")
        assert gone.status_code == 404 and "expired" in gone.json()["error"]["message"]
        assert c.get(f"/v1/contexts/{context_id}").status_code == 404  # deleted, not only hidden
        for bad in (-5, 0, 10**10, 1.5, "soon"):
            r = c.post("/v1/contexts", json={"context": CONTEXT, "ttl_s": bad})
            assert r.status_code == 400 and "ttl_s" in r.text, (bad, r.text)
        assert c.post("/v1/contexts", json={"context": CONTEXT, "pin": "yes please"}).status_code == 400
