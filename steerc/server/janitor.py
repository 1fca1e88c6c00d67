"""The store's garbage collector: at start-up and every ``gc_interval_s`` seconds.

It removes what killed processes left behind in the context store (temporary files, reference
marks whose holder is gone, KVs nobody holds: :meth:`steerc.stores.DiskStore.collect_garbage`)
and counts each kind in ``steerc_store_gc_removed_total``. A failing store is skipped until the
next round (the guard counts the failure).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from steerc.steering.stored_kv import KIND as KV_KIND
from steerc.stores import ContextStore

__all__ = ["Janitor"]

log = logging.getLogger(__name__)


class Janitor:
    def __init__(self, store: ContextStore, interval_s: float, on_removed: Callable[[str, int], None] = lambda kind, n: None) -> None:
        self.store, self.interval_s, self.on_removed = store, interval_s, on_removed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def collect(self) -> dict[str, int]:
        """One round now; the counts removed by kind."""
        try:
            removed = self.store.collect_garbage((KV_KIND,))
        except Exception:  # noqa: BLE001 - the janitor never takes the server down
            log.exception("context store garbage collection failed; trying again in %g s", self.interval_s)
            return {}
        for kind, n in removed.items():
            if n:
                self.on_removed(kind, n)
        return removed

    def start(self) -> None:
        """A round now (on this thread: start-up), then one every ``interval_s`` on a daemon thread."""
        self.collect()
        self._thread = threading.Thread(target=self._loop, name="steerc-store-gc", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.collect()

    def stop(self) -> None:
        self._stop.set()
