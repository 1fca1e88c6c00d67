"""``python -m steerc.cli ARGS`` (and ``steerc serve`` for the server tests), each call its own
process, without paying the interpreter start and the imports of torch, transformers and ONNX
Runtime (about 3 s of CPU) per process.

A zygote process imports those libraries once (nothing of steerc, nothing that reads the
environment the tests change) and forks one child per call; the child takes the caller's
environment, working directory and argv, runs the module (``steerc.cli``, or a wrapper of it such
as tests/server/kill_points.py) as ``__main__`` with stdin from /dev/null and stdout/stderr to
files, and exits with the command's exit status. ``run_cli`` returns a
``subprocess.CompletedProcess`` as ``subprocess.run(capture_output=True, text=True)`` does;
``spawn`` returns a ``Popen``-like handle (``pid``, ``poll``, ``wait``, ``terminate``, ``kill``,
``returncode``; a death by signal is ``-signum``).

A process starts the ordinary way (``subprocess``) when the zygote could differ from a fresh
interpreter: environment changes beyond ``STEERC_*`` variables, ``PYTEST_CURRENT_TEST`` and
``PYTHONPATH`` entries inside this repository (import-time settings such as ``HF_HUB_CACHE``, or a
shadowing package elsewhere),
``--debug`` (no warning filter before the imports), a zygote whose imports wrote anything,
configured logging or added a warning filter other than ``PRELOAD_FILTERS``, or no ``fork``. ``STEERC_TEST_FORK_CLI=0`` turns the zygote off.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["Forked", "run_cli", "spawn"]

REPO = Path(__file__).resolve().parents[1]
# Variables no preloaded library reads on import (the child gets the caller's whole environment):
# PYTHONPATH (entries inside this repository, checked apart) and pytest's name of the running test.
RUNTIME_ONLY = {"PYTHONPATH", "PYTEST_CURRENT_TEST"}
# What a command imports (steerc.cli's parser: numpy and torch; _quiet_dependencies and the commands: the rest).
# Beyond the top-level packages, the submodules the commands reach that cost the most to import: a
# tokenizer or config load (transformers.utils.type_validators pulls in torch.distributed.tensor and
# sympy, about 0.6 s: every command that opens an engine), `steerc serve` (fastapi, uvicorn) and
# `steerc compile` (the model code, torch.export, the ONNX exporter and onnxscript: about 2 s). One
# that is not installed is left to the command, which then fails as it would anyway.
PRELOAD = ("numpy", "torch", "transformers", "onnx", "onnxruntime",
           "transformers.utils.type_validators", "transformers.models.auto.tokenization_auto", "transformers.masking_utils",
           "transformers.modeling_utils", "torch.export", "torch.onnx._internal.exporter._compat", "onnxscript",
           "onnxscript.function_libs.torch_lib.ops", "fastapi", "uvicorn")
# The warning filters those imports may add, (action, category, module pattern): any other new filter
# and the zygote is not used. A fresh `steerc CMD` imports them after its own "ignore" filter, so
# they come before it there and after it in a forked child. Accelerate's is an "ignore" (the same
# either way); sympy's shows a SymPyDeprecationWarning once, where a forked child ignores it with
# every other warning: the one difference (a fresh `steerc compile` or `steerc run` of the tests prints none).
PRELOAD_FILTERS = {("ignore", "builtins.UserWarning", "torch.optim.lr_scheduler"), ("once", "sympy.utilities.exceptions.SymPyDeprecationWarning", None)}

_ZYGOTE = r'''
import json, logging, os, select, signal, sys, warnings


def child(req):
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.path[1:1] = req["path"]  # PYTHONPATH entries the zygote did not start with, where a fresh interpreter puts them
        out = os.open(req["stdout"], os.O_WRONLY | os.O_TRUNC)
        err = out if req["stderr"] == req["stdout"] else os.open(req["stderr"], os.O_WRONLY | os.O_TRUNC)
        for fd, new in ((0, os.open(os.devnull, os.O_RDONLY)), (1, out), (2, err)):
            os.dup2(new, fd)
        sys.argv = ["-m", *req["args"]]
        import runpy
        try:
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
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
    import numpy, torch  # steerc.cli's parser imports both before main runs: their warning filters come first there too
    err_before, filters_before = os.fstat(2).st_size, list(warnings.filters)
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    added = warnings.filters[:len(warnings.filters) - len(filters_before)]
    known = all((f[0], f"{f[2].__module__}.{f[2].__qualname__}", f[3] and f[3].pattern) in PRELOAD_FILTERS and f[1] is None and not f[4] for f in added)
    clean = (os.fstat(2).st_size == err_before and not logging.getLogger().handlers and warnings.filters[len(added):] == filters_before
             and known)

    def say(obj):
        os.write(ctl_out, (json.dumps(obj) + "\n").encode())

    say({"ready": clean})
    if not clean:
        return
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    buffer, live = b"", 0
    while True:
        try:
            ready = select.select([ctl_in, wake_r], [], [])[0]
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
        while live:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            live -= 1
            say({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})
        if ctl_in in ready:
            chunk = os.read(ctl_in, 65536)
            if not chunk:
                break  # the caller is gone
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (ctl_in, ctl_out, wake_r, wake_w):
                        os.close(fd)
                    child(req)
                live += 1
                say({"spawned": req["id"], "pid": pid})


main()
'''


class Forked:
    """A process forked by the zygote, handled like a ``subprocess.Popen``."""

    def __init__(self, args: list):
        self.args, self.pid, self.returncode = args, None, None
        self._started, self._exited, self._lost = threading.Event(), threading.Event(), False

    def _set_pid(self, pid: int):
        self.pid = pid
        self._started.set()

    def _set_returncode(self, code):
        self.returncode, self._lost = code, code is None
        self._started.set()
        self._exited.set()

    def poll(self):
        return self.returncode if self._exited.is_set() else None

    def wait(self, timeout: float | None = None):
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self._lost:
            raise RuntimeError("the steerc zygote died before its child's exit was known")
        return self.returncode

    def send_signal(self, sig: int):
        if not self._exited.is_set():
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class _Zygote:
    def __init__(self):
        self.lock = threading.Lock()
        self.env = dict(os.environ)
        self.path = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        ctl_in_r, ctl_in_w = os.pipe()
        ctl_out_r, ctl_out_w = os.pipe()
        self.err = tempfile.TemporaryFile()  # noqa: SIM115  (the zygote's stderr, open while it lives)
        code = f"PRELOAD = {PRELOAD!r}\nPRELOAD_FILTERS = {PRELOAD_FILTERS!r}\n{_ZYGOTE}"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(ctl_in_r), str(ctl_out_w)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err, pass_fds=(ctl_in_r, ctl_out_w), env=self.env)
        os.close(ctl_in_r)
        os.close(ctl_out_w)
        self.requests, self.replies = ctl_in_w, os.fdopen(ctl_out_r, "rb")
        self.next_id, self.spawned, self.children = 0, {}, {}
        line = self.replies.readline()
        self.ready = bool(line) and json.loads(line)["ready"]
        if not self.ready:
            self.stop()
            return
        threading.Thread(target=self._read_replies, name="steerc-zygote-replies", daemon=True).start()

    def _read_replies(self):
        for line in self.replies:
            reply = json.loads(line)
            with self.lock:
                if "spawned" in reply:
                    child = self.children[reply["pid"]] = self.spawned.pop(reply["spawned"])
                    child._set_pid(reply["pid"])
                else:
                    self.children.pop(reply["exited"])._set_returncode(reply["returncode"])
        with self.lock:
            self.ready = False
            for child in [*self.spawned.values(), *self.children.values()]:
                child._set_returncode(None)  # the zygote died: their exits are unknown

    def _extra_path(self, env: dict) -> list[str] | None:
        """PYTHONPATH entries ``env`` adds to the zygote's when all lie inside this repository, else None."""
        entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        extra = [p for p in entries if p not in self.path]
        if any(p not in entries for p in self.path) or not all(Path(p).resolve().is_relative_to(REPO) for p in extra):
            return None
        return extra

    def serves(self, env: dict, args: tuple) -> bool:
        if not self.ready or self.proc.poll() is not None or "--debug" in args or self._extra_path(env) is None:
            return False
        changed = {k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k)}
        return all(k.startswith("STEERC_") or k in RUNTIME_ONLY for k in changed)

    def spawn(self, module: str, args: tuple, env: dict, cwd: str, stdout: Path, stderr: Path) -> Forked:
        with self.lock:
            self.next_id += 1
            child = self.spawned[self.next_id] = Forked([sys.executable, "-m", module, *args])
            request = {"id": self.next_id, "module": module, "args": list(args), "env": env, "cwd": cwd, "stdout": str(stdout),
                       "stderr": str(stderr), "path": self._extra_path(env)}
            os.write(self.requests, (json.dumps(request) + "\n").encode())
        if not child._started.wait(120) or child.pid is None:
            raise RuntimeError("the steerc zygote did not fork")
        return child

    def stop(self):
        if self.proc.poll() is None:
            os.close(self.requests)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def _get_zygote() -> _Zygote | None:
    global _zygote
    if os.environ.get("STEERC_TEST_FORK_CLI", "1") == "0" or not hasattr(os, "fork"):
        return None
    with _zygote_lock:
        if _zygote is None:
            _zygote = _Zygote()
            atexit.register(_zygote.stop)
    return _zygote


def spawn(module: str, args, env: dict, stdout: Path):
    """``subprocess.Popen([python, -m, module, *args], stdout=<stdout file>, stderr=STDOUT, env=env)``
    (``env``: the whole environment), forked from the zygote when that is the same."""
    args = tuple(map(str, args))
    zygote = _get_zygote()
    if zygote is not None and zygote.serves(env, args):
        stdout.touch()
        return zygote.spawn(module, args, env, os.getcwd(), stdout, stdout)
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=stdout.open("w"), stderr=subprocess.STDOUT, env=env)


def run_cli(*args, env: dict | None = None, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([python, -m, steerc.cli, *args], capture_output=True, text=True, ...)``,
    ``env`` added to the current environment; forked from the zygote when that is the same."""
    args = tuple(map(str, args))
    full_env = {**os.environ, **(env or {})}
    zygote = _get_zygote() if cwd is None else None
    if zygote is None or not zygote.serves(full_env, args):
        return subprocess.run([sys.executable, "-m", "steerc.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
                              check=False)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch()
        err.touch()
        child = zygote.spawn("steerc.cli", args, full_env, os.getcwd(), out, err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(30)
            raise
        return subprocess.CompletedProcess(child.args, code, out.read_text(errors="replace"), err.read_text(errors="replace"))
