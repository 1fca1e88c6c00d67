"""``python -m kill_points serve ENGINE ...``: ``steerc serve`` whose disk store SIGKILLs its own
process at a chosen point of its file writes (tests/server/test_server_kill.py).

Before the CLI runs, every file-writing step that ``steerc.stores.disk`` can reach through its
module globals is wrapped: ``os`` (``open`` for writing, ``write``, ``fsync``, ``fdatasync``,
``ftruncate``, ``replace``, ``rename``, ``link``, ``symlink``; ``fdopen`` only wraps its file),
``tempfile`` (``mkstemp``, ``NamedTemporaryFile``), the ``open`` builtin for writing, and
``Path`` (``open`` for writing, ``touch``, ``rename``, ``replace``, ``hardlink_to``,
``symlink_to``); a file object opened for writing has its ``write``, ``flush`` and ``close``
wrapped. Each wrapped operation passes *points*, numbered from 1 in the order the process
reaches them: ``before`` it, ``mid`` (data writes only: half the bytes written and flushed to
the OS) and ``after`` it. Reads are not points.

``STEERC_KILL_LOG``: a file each point is appended to as ``N<TAB>operation<TAB>phase<TAB>path``
(the point killed at gets a fifth field, ``KILL``). ``STEERC_KILL_AT=N``: ``os.kill(getpid(),
SIGKILL)`` at point N; unset or 0 only counts. Only the disk store's module is patched, so
nothing else the server writes (its log, the engine's files) is a point.
"""

import os
import signal
import sys
import tempfile
import threading
import types
from pathlib import Path

_KILL_AT = int(os.environ.get("STEERC_KILL_AT") or 0)
_LOG = os.environ.get("STEERC_KILL_LOG")
_log_fd = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if _LOG else None
_count = 0
_lock = threading.Lock()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _name(path) -> str:
    if isinstance(path, int):
        return f"fd {path}"
    return os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)


def point(operation: str, phase: str, path="") -> None:
    """Pass one point: log it, and die here if it is the chosen one."""
    global _count
    with _lock:
        _count += 1
        n, kill = _count, _count == _KILL_AT
        if _log_fd is not None:
            os.write(_log_fd, f"{n}\t{operation}\t{phase}\t{_name(path)}{chr(9) + 'KILL' if kill else ''}\n".encode())
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)


def _writing(mode: str) -> bool:
    return any(c in mode for c in "wax+")


def _around(operation: str, fn, path_arg: int | None = 0, path_of=None, fd: bool = False):
    """``fn`` with a point before and after it; the path logged is argument ``path_arg`` (or
    ``path_of(result)``; ``fd``: the first argument, a file descriptor)."""

    def wrapped(*args, **kwargs):
        path = args[0] if fd else args[path_arg] if path_arg is not None and len(args) > path_arg else ""
        point(operation, "before", path)
        result = fn(*args, **kwargs)
        point(operation, "after", path_of(result) if path_of else path)
        return result

    return wrapped


class _File:
    """A file object opened for writing, its ``write``/``flush``/``close`` made points."""

    def __init__(self, fh, name) -> None:
        self._fh, self._name = fh, _name(name)

    def write(self, data):
        point("file.write", "before", self._name)
        data = data if isinstance(data, str) else memoryview(data).cast("B")
        half = len(data) // 2
        written = self._fh.write(data[:half])
        self._fh.flush()  # the first half reaches the OS: what a kill in the middle of a write leaves
        point("file.write", "mid", self._name)
        written += self._fh.write(data[half:])
        point("file.write", "after", self._name)
        return written

    def flush(self):
        point("file.flush", "before", self._name)
        self._fh.flush()
        point("file.flush", "after", self._name)

    def close(self):
        if self._fh.closed:
            return
        point("file.close", "before", self._name)
        self._fh.close()
        point("file.close", "after", self._name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __iter__(self):
        return iter(self._fh)


def _open_file(real_open, operation: str):
    def opened(file, mode="r", *args, **kwargs):
        if not _writing(mode):
            return real_open(file, mode, *args, **kwargs)
        point(operation, "before", file)
        fh = real_open(file, mode, *args, **kwargs)
        point(operation, "after", getattr(fh, "name", file))
        return _File(fh, getattr(fh, "name", file))

    return opened


def _os_write(fd, data):
    point("os.write", "before", fd)
    data = memoryview(data).cast("B")
    half = len(data) // 2
    written = os.write(fd, data[:half])
    point("os.write", "mid", fd)
    if written == half:
        written += os.write(fd, data[half:])
    point("os.write", "after", fd)
    return written


def _os_open(path, flags, *args, **kwargs):
    if not flags & _WRITE_FLAGS:
        return os.open(path, flags, *args, **kwargs)
    return _around("os.open", os.open)(path, flags, *args, **kwargs)


def patched_os() -> types.ModuleType:
    """A stand-in for ``os`` in the disk store's module: ``os`` with its write steps made points."""
    proxy = types.ModuleType("os")
    proxy.__dict__.update(os.__dict__)
    proxy.open = _os_open
    proxy.write = _os_write
    proxy.fdopen = lambda fd, mode="r", *args, **kwargs: _File(os.fdopen(fd, mode, *args, **kwargs), fd) if _writing(mode) else os.fdopen(fd, mode, *args, **kwargs)
    for name in ("fsync", "fdatasync", "ftruncate"):
        if hasattr(os, name):
            setattr(proxy, name, _around(f"os.{name}", getattr(os, name), None, path_of=None, fd=True))
    for name in ("replace", "rename", "link", "symlink"):
        setattr(proxy, name, _around(f"os.{name}", getattr(os, name), 1))
    return proxy


def patched_tempfile() -> types.ModuleType:
    proxy = types.ModuleType("tempfile")
    proxy.__dict__.update(tempfile.__dict__)
    proxy.mkstemp = _around("tempfile.mkstemp", tempfile.mkstemp, None, path_of=lambda r: r[1])

    def named(*args, **kwargs):
        point("tempfile.NamedTemporaryFile", "before", kwargs.get("dir", ""))
        fh = tempfile.NamedTemporaryFile(*args, **kwargs)
        point("tempfile.NamedTemporaryFile", "after", fh.name)
        return _File(fh, fh.name)

    proxy.NamedTemporaryFile = named
    return proxy


class PatchedPath(type(Path())):
    """``Path`` with its write steps made points (paths derived from it keep the class)."""

    def open(self, mode="r", *args, **kwargs):
        if not _writing(mode):
            return super().open(mode, *args, **kwargs)
        point("Path.open", "before", self)
        fh = super().open(mode, *args, **kwargs)
        point("Path.open", "after", self)
        return _File(fh, self)

    def touch(self, *args, **kwargs):
        return _around("Path.touch", super().touch, None, path_of=lambda r: self)(*args, **kwargs)

    def rename(self, target):
        return _around("Path.rename", super().rename)(target)

    def replace(self, target):
        return _around("Path.replace", super().replace)(target)

    def hardlink_to(self, target):
        return _around("Path.hardlink_to", super().hardlink_to, None, path_of=lambda r: self)(target)

    def symlink_to(self, target, *args):
        return _around("Path.symlink_to", super().symlink_to, None, path_of=lambda r: self)(target, *args)


def install() -> None:
    """Patch the disk store's module (imported here, before the server builds its store)."""
    from steerc.stores import disk

    disk.os = patched_os()
    disk.tempfile = patched_tempfile()
    disk.open = _open_file(open, "open")
    disk.Path = PatchedPath


if __name__ == "__main__":
    install()
    from steerc.cli import main

    sys.exit(main(sys.argv[1:]))
