"""In-process app on a disk store whose disk fills up (an injected ENOSPC): requests keep
answering, nothing partial is left, and later entries are stored once space returns."""

import errno
import os
import time

import pytest
from fastapi.testclient import TestClient

from steerc.runtime.engine import Engine
from steerc.server.app import create_app
from steerc.server.settings import ServerSettings
from steerc.stores import DiskStore, MemoryStore, TieredStore
from steerc.stores import disk as disk_mod

from test_api import CONTEXT, QUESTION


@pytest.fixture(scope="module")
def app_and_disk(tiny_text_engine, tmp_path_factory):
    disk = DiskStore(tmp_path_factory.mktemp("disk-full-store"))
    app = create_app(Engine.load(tiny_text_engine), ServerSettings(), TieredStore(MemoryStore(0), disk))
    with TestClient(app) as client:
        yield app, client, disk


def _ask(client, context: str) -> dict:
    r = client.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 4, "temperature": 0, "steer": {"context": context}})
    assert r.status_code == 200, r.text
    return r.json()


def _files(disk) -> list:
    return sorted(p.name for p in disk.root.rglob("*") if p.is_file())


def test_a_full_disk_degrades_and_the_store_is_used_again_when_space_returns(app_and_disk, monkeypatch):
    app, client, disk = app_and_disk
    healthy = _ask(client, CONTEXT + " (disk)")
    assert healthy["steer"]["store"] == "ok" and _files(disk)
    disk.clear()  # entries, KV and reference marks
    real_fdopen = os.fdopen

    def half_written(fd, mode):  # writes half, then the disk is full
        fh = real_fdopen(fd, mode)
        write = fh.write

        def full(data):
            write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        fh.write = full
        return fh

    backoff = app.state.steerc.service.store.backoff
    backoff.clock = lambda: 0.0  # no retry during the outage, however slow the requests
    monkeypatch.setattr(disk_mod.os, "fdopen", half_written)
    answers = [_ask(client, CONTEXT + " (disk)") for _ in range(3)]
    assert all(a["steer"]["store"] == "unavailable" and a["steer"]["cache"] == "miss" for a in answers)
    assert all(a["choices"] == healthy["choices"] for a in answers)
    assert _files(disk) == []  # no entry, no temporary
    assert 'steerc_store_errors_total{backend="disk",operation="put"} 1.0' in client.get("/metrics").text
    monkeypatch.undo()
    backoff.clock = lambda: 1.0  # the backoff interval is over
    again = _ask(client, CONTEXT + " (disk)")
    backoff.clock = time.monotonic
    assert again["steer"]["store"] == "ok" and again["choices"] == healthy["choices"]
    assert _files(disk)  # stored again
    assert _ask(client, CONTEXT + " (disk)")["steer"]["cache"] == "disk"
