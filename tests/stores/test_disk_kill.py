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
