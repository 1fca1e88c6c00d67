"""``ServerState``: what one app's routes share, kept in ``app.state.steerc``.

One object per :func:`~steerc.server.app.create_app`: the settings, the engine-side
:class:`~steerc.server.service.Service`, the :class:`~steerc.server.scheduling.Scheduler`
(admission and worker threads) and the Prometheus metrics. Routes get it through the
``State`` dependency of :mod:`steerc.server.routes.deps`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from steerc.runtime.engine import Engine
from steerc.server.janitor import Janitor
from steerc.server.limits import Admission
from steerc.server.metrics import Metrics
from steerc.server.scheduling import Scheduler
from steerc.server.service import Service
from steerc.server.settings import ServerSettings
from steerc.server.tenants import Tenants, load_key_file
from steerc.steering.config import SteerConfig
from steerc.stores import ContextStore, open_store

__all__ = ["ServerState"]


@dataclass(frozen=True)
class ServerState:
    """``started``: when the server started (Unix seconds; ``created`` in ``GET /v1/models``)."""

    settings: ServerSettings
    service: Service
    scheduler: Scheduler
    metrics: Metrics
    started: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if self.scheduler.metrics is not self.metrics:
            raise ValueError("the scheduler must count into the server's metrics")

    @classmethod
    def open(cls, engine: Engine, settings: ServerSettings, store: ContextStore | None = None, steer_defaults: SteerConfig | None = None,
             steer_presets: Mapping[str, Any] | None = None) -> ServerState:
        """The state of a new server: ``store`` (default: the one ``settings.kv_store`` names)
        wrapped by the service, and its failures counted in the metrics; ``steer_presets``: see :class:`~steerc.server.service.Service`."""
        store = store if store is not None else open_store(settings.kv_store, settings.memory_store_bytes, settings.store_timeout_s, settings.kv_store_max_bytes,
                                                           settings.kv_store_dtype)
        service = Service(engine, store, settings, steer_defaults, steer_presets)
        service.tenants = Tenants(settings.api_key, load_key_file(settings.api_keys_file) if settings.api_keys_file else None, settings.share_contexts)
        admission = Admission(settings.max_concurrency, settings.max_queue)
        metrics = Metrics(lambda: admission.waiting, lambda: admission.active, lambda: service.batcher.running, lambda: service.batcher.waiting)
        service.batcher.on_step = metrics.batch_size.observe
        service.janitor = Janitor(service.store, settings.gc_interval_s, lambda kind, n: metrics.gc_removed.labels(kind).inc(n))
        metrics.watch_store(service.store)
        metrics.watch_prefix_cache(service.prefix_cache)
        service.janitor.start()
        service.store.on_error = lambda backend, operation: metrics.store_errors.labels(backend, operation).inc()
        return cls(settings, service, Scheduler(admission, metrics, settings.request_timeout_s), metrics)

    @property
    def admission(self) -> Admission:
        return self.scheduler.admission
