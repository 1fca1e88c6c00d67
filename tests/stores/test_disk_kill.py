"""SIGKILL of a process in the middle of DiskStore writes, at many points: what is left is read
back whole (or not at all), never torn."""

import signal
import subprocess
import sys
import time

import numpy as np

from steerc.stores import DiskStore, context_key

WRITER = """
import sys, numpy as np
from steerc.stores import DiskStore, StoredContext, context_key
store = DiskStore(sys.argv[1])
for i in range(10_000):
    key = context_key("kill-test", [i], "", {})
    store.put(key, StoredContext({"kv": np.full((1 << 20,), i, np.float32)}, {"i": i}))  # 4 MiB
    print(i, flush=True)
"""


def test_entries_written_when_the_writer_is_killed_are_whole_or_absent(tmp_path):
    root = tmp_path / "store"
    written, mid_write = 0, 0
    for n, delay in enumerate(np.linspace(0.3, 1.5, 8)):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(float(delay) + 0.05 * n)  # start-up, then somewhere in a write
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(10)
        assert proc.returncode == -signal.SIGKILL, err
        written = max(written, len(out.split()))
        mid_write += bool(list(root.glob("*/.*.tmp")))  # killed inside a write: its temporary is left
        store = DiskStore(root)
        for path in root.glob("*/*.safetensors"):
            entry = store.get(path.stem)
            assert entry is not None and entry.tensors["kv"].shape == (1 << 20,)
            i = entry.meta["i"]
            assert path.stem == context_key("kill-test", [i], "", {}) and np.all(entry.tensors["kv"] == i)
        assert store.stats.corrupt == 0  # nothing torn was read
        store.clear()  # drops the killed write's temporary too
        assert not list(root.glob("*/.*.tmp"))
    assert written > 0 and mid_write > 0, (written, mid_write)  # the kills did land among writes, some inside one


PREPARER = """
import sys, numpy as np
from steerc.stores import DiskStore, StoredContext, context_key
store = DiskStore(sys.argv[1])
for i in range(10_000):  # the order of steerc.steering.prepared.save_prepared: the KV, its mark, the entry
    kv, holder = context_key("kv", [i], "", {}), context_key("entry", [i], "", {})
    store.put(kv, StoredContext({"kv": np.full((1 << 19,), i, np.float32)}, {"kind": "kv"}))
    store.add_ref(kv, holder)
    store.put(holder, StoredContext({"bias": np.zeros(8, np.float32)}, {"kind": "prepared", "kv_key": kv}))
    print(i, flush=True)
"""


def test_garbage_collection_after_kills_removes_every_orphan_and_no_live_kv(tmp_path):
    root = tmp_path / "store"
    removed = {"temp_files": 0, "stale_marks": 0, "orphans": 0, "expired_pins": 0}
    for n, delay in enumerate(np.linspace(0.3, 1.2, 6)):
        proc = subprocess.Popen([sys.executable, "-c", PREPARER, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(float(delay) + 0.03 * n)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(10)
        store = DiskStore(root)
        for kind, count in store.collect_garbage(("kv",), grace_s=0).items():
            removed[kind] += count
        entries = {p.stem: store.get(p.stem) for p in root.glob("*/*.safetensors")}
        holders = {m.parent.name: {h.name for h in m.parent.iterdir()} for m in root.glob("refs/*/*/*")}
        for key, entry in entries.items():
            assert entry is not None
            if entry.meta["kind"] == "prepared":
                assert entry.meta["kv_key"] in entries  # no live KV was removed
            else:
                assert holders.get(key) and all(h in entries for h in holders[key])  # every KV left is held by an entry that exists
        assert not list(root.glob("*/.*.tmp"))
    assert sum(removed.values()) > 0, removed  # the kills did leave garbage, and it went
