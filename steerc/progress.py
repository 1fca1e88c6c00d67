"""Named, timed stages for long work. The library logs; a listener (the CLI) may display."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

__all__ = ["StageTracker"]

log = logging.getLogger("steerc")

Listener = Callable[[str, str, float | None], None]  # (event "start"|"done"|"failed", stage, seconds)


class StageTracker:
    def __init__(self, listener: Listener | None = None):
        self.listener = listener
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("%s ...", name)
        if self.listener:
            self.listener("start", name, None)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            if self.listener:
                self.listener("failed", name, time.perf_counter() - start)
            raise
        elapsed = time.perf_counter() - start
        self.timings[name] = self.timings.get(name, 0.0) + elapsed
        log.info("%s done in %.1f s", name, elapsed)
        if self.listener:
            self.listener("done", name, elapsed)
