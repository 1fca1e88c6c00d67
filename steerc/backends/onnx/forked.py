"""Run one piece of a compile in a forked child process, beside the parent's own work.

The two ONNX exports of a compile (step graph, analysis graph) are single-threaded Python for
most of their minutes; on a machine with two or more cores they overlap. The child inherits
the captured programs by ``fork`` (nothing is pickled), writes its files, and reports success
or its error as JSON in a file the parent reads after ``waitpid``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from steerc.errors import EngineError

__all__ = ["ForkedCall", "can_fork"]

log = logging.getLogger(__name__)


def can_fork() -> bool:
    """Fork is available (Linux), there is a second core, and ``STEERC_PARALLEL_EXPORT`` is not 0."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return sys.platform.startswith("linux") and cores > 1 and os.environ.get("STEERC_PARALLEL_EXPORT", "1") != "0"


class ForkedCall:
    """``fn()`` in a child process; :meth:`join` waits and returns its seconds or raises its error."""

    def __init__(self, fn: Callable[[], None], report: Path, what: str):
        self.report, self.what = Path(report), what
        self.report.unlink(missing_ok=True)
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns
            self._child(fn)

    def _child(self, fn: Callable[[], None]) -> None:
        status = 1
        try:
            import torch

            torch.set_num_threads(1)  # the parent's intra-op pool does not survive fork; one core each
            start = time.perf_counter()
            fn()
            result = {"ok": True, "seconds": time.perf_counter() - start}
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        try:
            tmp = self.report.with_name(self.report.name + ".tmp")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, self.report)
        finally:
            os._exit(status)

    def join(self) -> float:
        _, status = os.waitpid(self.pid, 0)
        result = json.loads(self.report.read_text()) if self.report.is_file() else None
        self.report.unlink(missing_ok=True)
        if result is None:
            raise EngineError(f"{self.what} in a worker process died without a report (exit status {status}); "
                              "set STEERC_PARALLEL_EXPORT=0 to run it in this process")
        if not result["ok"]:
            log.debug("worker traceback:\n%s", result["traceback"])
            raise EngineError(f"{self.what} failed in its worker process: {result['error']}")
        return float(result["seconds"])

    def cancel(self) -> None:
        """Stop the child (the parent failed or was interrupted) and reap it."""
        try:
            os.kill(self.pid, signal.SIGTERM)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.report.unlink(missing_ok=True)
