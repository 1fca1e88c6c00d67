"""SIGKILL of `steerc serve` while it writes a context entry to its disk store, at every point of
the write: what the killed server leaves is read back whole or not at all (never torn), and a
server on that folder answers as a server on a clean store does.

The kill points are not timed: the writer runs through tests/server/kill_points.py, which makes
every file-writing step of the disk store's module a numbered point (before it, half-way through
a data write, after it) and SIGKILLs the server at point ``STEERC_KILL_AT``. A first server,
killed nowhere, counts the points one inline request passes; then one server per point is
killed there, each on its own folder (two at a time). A plain `steerc serve`, started on a clean
store, gives the reference answers; it then reads each killed server's folder (a byte-for-byte
copy put in place of its own store folder) and answers the same request again.
"""

import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Server

from steerc.stores import DiskStore
from test_api import CONTEXT, QUESTION

HERE = Path(__file__).parent
REQUEST = {"prompt": QUESTION, "max_tokens": 4, "temperature": 0, "steer": {"context": CONTEXT[:500] + " (kill run)"}}
DISK_ONLY = ("--memory-store-mb", "0")  # every prepared context goes to the disk store
RENAMES = {"os.replace", "os.rename", "os.link", "os.symlink", "Path.rename", "Path.replace", "Path.hardlink_to", "Path.symlink_to"}
TORN_READ = "dropping unreadable stored context"  # DiskStore's warning when it reads a corrupt entry


@dataclass(frozen=True)
class Point:
    n: int
    operation: str
    phase: str
    path: str
    kill: bool


def _points(log: Path) -> list[Point]:
    out = []
    for line in log.read_text().splitlines():
        n, operation, phase, path, *kill = line.split("\t")
        out.append(Point(int(n), operation, phase, path, kill == ["KILL"]))
    return out


def _kill_points(points: list[Point]) -> list[int]:
    """Every point, but a ``before`` right after an ``after``: nothing was written in between,
    so a kill there leaves the same files."""
    return [p.n for i, p in enumerate(points) if not (p.phase == "before" and i > 0 and points[i - 1].phase == "after")]


def _renamed(points: list[Point], root: Path) -> set[str]:
    """Files (relative to ``root``) put in place by a rename-like step that completed."""
    return {str(Path(p.path).relative_to(root)) for p in points if p.operation in RENAMES and p.phase == "after"}


def _files(root: Path) -> tuple[set[str], set[str]]:
    """(files under ``root`` the store may read as entries, stray temporaries); reference marks
    (``refs/``, empty files that say which entry uses which KV) are neither, see :func:`_marks`."""
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()
    temporaries = {f for f in files if Path(f).name.startswith(".") and f.endswith(".tmp")}
    return files - temporaries - _marks(root), temporaries


def _marks(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "refs").rglob("*") if p.is_file()} if (root / "refs").exists() else set()


def _touched(points: list[Point], root: Path) -> set[str]:
    """Reference marks made by a step that completed."""
    return {str(Path(p.path).relative_to(root)) for p in points if p.operation == "Path.touch" and p.phase == "after"}


def _env(log: Path, kill_at: int = 0) -> dict:
    path = [str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p), "STEERC_KILL_LOG": str(log), "STEERC_KILL_AT": str(kill_at)}


def _ask(server: Server) -> dict:
    with server.client(timeout=60) as c:
        r = c.post("/v1/completions", json=REQUEST)
    assert r.status_code == 200, r.text
    return r.json()


def _killed_at(engine, tmp: Path, n: int) -> tuple[Path, list[Point]]:
    """A hooked server killed at point ``n`` of the request's writes: its folder and its points."""
    folder, log = tmp / f"kill-{n}", tmp / f"kill-{n}.log"
    server = Server(engine, tmp, "--kv-store", str(folder), *DISK_ONLY, env=_env(log, n), module="kill_points")
    try:
        with server.client(timeout=60) as c, pytest.raises(httpx.HTTPError):  # the connection dies with the server
            c.post("/v1/completions", json=REQUEST)
        assert server.proc.wait(30) == -signal.SIGKILL, server.log.read_text()
    finally:
        server.stop()
    return folder, _points(log)


def test_a_server_killed_while_writing_leaves_nothing_torn_and_a_restart_answers_as_a_clean_store(tiny_text_engine, tmp_path):
    start = time.monotonic()
    check, count = tmp_path / "check", tmp_path / "count"
    with ThreadPoolExecutor(2) as pool:  # the reference server and the counting run start together
        starting = [pool.submit(Server, tiny_text_engine, tmp_path, "--kv-store", str(check), *DISK_ONLY),
                    pool.submit(Server, tiny_text_engine, tmp_path, "--kv-store", str(count), *DISK_ONLY, env=_env(tmp_path / "count.log"), module="kill_points")]
    if any(f.exception() for f in starting):
        for f in starting:
            if not f.exception():
                f.result().stop()
        raise next(f.exception() for f in starting if f.exception())
    reference, counter = (f.result() for f in starting)
    try:
        clean = _ask(reference)  # a clean, empty store
        assert clean["steer"]["cache"] == "miss" and clean["steer"]["store"] == "ok"
        counted = _ask(counter)
        assert counted["choices"] == clean["choices"]  # the hooks change nothing but the kill
        assert _ask(reference)["steer"]["cache"] == "disk"  # what a hit looks like here
        counter.stop()

        points = _points(tmp_path / "count.log")
        written = _renamed(points, count)  # every file the request wrote
        entries, temporaries = _files(count)
        assert entries == written and not temporaries, (entries, written)  # every file went through a hooked rename
        assert _marks(count) == _touched(points, count) and _marks(count), _marks(count)  # and every reference mark through a hooked touch
        assert any(p.phase == "mid" for p in points)  # and its data through a hooked write
        store = DiskStore(count)
        keys = {}  # the entries DiskStore reads by key, and their files
        for f in written:
            key = Path(f).name.split(".")[0]
            if count / f == store.path(key):
                keys[key] = f
        assert keys, written
        expected = {k: store.get(k).tensors for k in keys}
        kills = _kill_points(points)

        with ThreadPoolExecutor(2) as pool:  # the kills, two servers at a time
            runs = list(pool.map(lambda n: (n, *_killed_at(tiny_text_engine, tmp_path, n)), kills))

        for n, folder, got in runs:
            where = f"killed at point {n} ({got[-1].operation} {got[-1].phase})"
            assert got[-1].n == n and got[-1].kill and [(p.operation, p.phase) for p in got] == [(p.operation, p.phase) for p in points[:n]], where
            done = _renamed(got, folder)
            entries, temporaries = _files(folder)
            assert entries == done, where  # nothing under an entry's name but what was renamed into place whole
            assert _marks(folder) == _touched(got, folder), where

            shutil.rmtree(check, ignore_errors=True)  # the reference server's store becomes the killed server's folder
            if folder.exists():
                shutil.copytree(folder, check)
            else:
                check.mkdir()
            body = _ask(reference)
            assert body["choices"] == clean["choices"], where  # the clean store's answer
            assert body["steer"]["cache"] == ("disk" if done == written else "miss"), where  # a hit only when every entry was written
            prefilled = body["steer"]["context_prefill_tokens"]  # whole entries are used: the first one written is the plain KV
            assert (prefilled < clean["steer"]["context_prefill_tokens"]) == bool(done), (where, prefilled)
            assert body["steer"]["store"] == "ok", where
            assert TORN_READ not in reference.log.read_text(), where
            assert _files(check)[0] == written, where  # and the missing entries are stored now

            disk = DiskStore(folder)  # read back here too: each entry whole and equal to the clean run's, or absent
            for key, tensors in expected.items():
                entry = disk.get(key)
                assert (entry is not None) == (keys[key] in done), (where, key)
                if entry is not None:
                    assert entry.tensors.keys() == tensors.keys() and all(np.array_equal(entry.tensors[t], tensors[t]) for t in tensors), (where, key)
            assert disk.stats.corrupt == 0, where
    finally:
        reference.stop()
        counter.stop()
    mid = sum(points[n - 1].phase == "mid" for n in kills)
    print(f"{len(kills)} kill points, {mid} of them half-way through a write ({len(points)} hook points, {len(written)} files per request) in {time.monotonic() - start:.0f} s")
