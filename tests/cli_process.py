"""``python -m steerc.cli ARGS`` for the CLI tests, each call its own process, without paying the
interpreter start and the imports of torch, transformers and ONNX Runtime (about 3 s of CPU) per call.

A zygote process imports those libraries once (nothing of steerc, nothing that reads the
environment the tests change) and forks one child per call; the child takes the caller's
environment, working directory and argv, runs ``steerc.cli`` as ``__main__`` with stdin from
/dev/null and stdout/stderr to files, and exits with the command's exit status. The caller gets a
``subprocess.CompletedProcess`` as from ``subprocess.run(capture_output=True, text=True)``.

A call falls back to a real ``subprocess.run`` when the zygote could differ from a fresh
interpreter: environment changes beyond ``STEERC_*`` variables (import-time settings such as
``HF_HUB_CACHE`` or a shadowing ``PYTHONPATH``), ``--debug`` (no warning filter before the
imports), a zygote whose imports wrote anything or configured logging, or no ``fork``.
``STEERC_TEST_FORK_CLI=0`` turns the zygote off.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["run_cli"]

# What a command imports (steerc.cli's parser: numpy and torch; _quiet_dependencies and the commands: the rest).
PRELOAD = ("numpy", "torch", "transformers", "onnx", "onnxruntime")

_ZYGOTE = r'''
import json, logging, os, select, sys, warnings


def child(req):
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_TRUNC), (2, req["stderr"], os.O_WRONLY | os.O_TRUNC)):
            new = os.open(path, flags)
            os.dup2(new, fd)
            os.close(new)
        sys.argv = ["-m", *req["args"]]
        import runpy
        try:
            runpy.run_module("steerc.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:  # what the interpreter does with it
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def main():
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as steerc.cli sets it before importing transformers
    ctl_in, ctl_out = (int(x) for x in sys.argv[1:3])
    reply = os.fdopen(ctl_out, "w", buffering=1)
    import numpy, torch  # noqa: F401,E401  (steerc.cli's parser imports both before main runs: their warning filters come first there too)
    err_before, filters_before = os.fstat(2).st_size, list(warnings.filters)
    for name in PRELOAD:
        __import__(name)
    clean = os.fstat(2).st_size == err_before and not logging.getLogger().handlers and warnings.filters == filters_before
    reply.write(json.dumps({"ready": clean}) + "\n")
    if not clean:
        return
    for line in os.fdopen(ctl_in):
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.close(ctl_in)
            reply.close()
            child(req)
        reply.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


main()
'''


class _Zygote:
    def __init__(self):
        self.lock = threading.Lock()
        self.env = dict(os.environ)
        ctl_in_r, ctl_in_w = os.pipe()
        ctl_out_r, ctl_out_w = os.pipe()
        self.err = tempfile.TemporaryFile()  # noqa: SIM115  (the zygote's stderr, open while it lives)
        code = f"PRELOAD = {PRELOAD!r}\n{_ZYGOTE}"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(ctl_in_r), str(ctl_out_w)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err, pass_fds=(ctl_in_r, ctl_out_w), env=self.env)
        os.close(ctl_in_r), os.close(ctl_out_w)
        self.requests = os.fdopen(ctl_in_w, "w", buffering=1)
        self.replies, self.buffer, self.ready = ctl_out_r, b"", True
        try:
            self.ready = json.loads(self._reply(600))["ready"]
        except (RuntimeError, subprocess.TimeoutExpired):
            self.ready = False
        if not self.ready:
            self.stop()

    def serves(self, env: dict, args: tuple) -> bool:
        if not self.ready or self.proc.poll() is not None or "--debug" in args:
            return False
        changed = {k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k)}
        return all(k.startswith("STEERC_") for k in changed)

    def run(self, args: tuple, env: dict, cwd: str, timeout: float) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch(), err.touch()
            self.requests.write(json.dumps({"args": list(args), "env": env, "cwd": cwd, "stdout": str(out), "stderr": str(err)}) + "\n")
            pid = json.loads(self._reply(30))["pid"]
            try:
                code = json.loads(self._reply(timeout))["returncode"]
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._reply(30)  # reaped
                raise
            return subprocess.CompletedProcess([sys.executable, "-m", "steerc.cli", *args], code,
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def _reply(self, timeout: float) -> str:
        """The zygote's next reply line (raw reads: a buffered reader would hide a second line from select)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if not select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise subprocess.TimeoutExpired("steerc (forked)", timeout)
            chunk = os.read(self.replies, 65536)
            if not chunk:
                self.ready = False
                raise RuntimeError("the steerc CLI zygote died")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def stop(self):
        if self.proc.poll() is None:
            self.requests.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_zygote: _Zygote | None = None


def _get_zygote() -> _Zygote | None:
    global _zygote
    if os.environ.get("STEERC_TEST_FORK_CLI", "1") == "0" or not hasattr(os, "fork"):
        return None
    if _zygote is None:
        _zygote = _Zygote()
        atexit.register(_zygote.stop)
    return _zygote


def run_cli(*args, env: dict | None = None, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([python, -m, steerc.cli, *args], capture_output=True, text=True, ...)``,
    ``env`` added to the current environment; forked from the zygote when that is the same."""
    args = tuple(map(str, args))
    full_env = {**os.environ, **(env or {})}
    zygote = _get_zygote() if cwd is None else None
    if zygote is not None and zygote.serves(full_env, args):
        return zygote.run(args, full_env, os.getcwd(), timeout)
    return subprocess.run([sys.executable, "-m", "steerc.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, check=False)
