"""``none``: the plain prefix-cached context, no steering (the baseline every method is paired against)."""

from __future__ import annotations

import time

from steerc.steering.config import SteerConfig
from steerc.steering.contexts import BuildJob, PreparedContext, plain_context
from steerc.steering.methods.base import SteeringMethod

__all__ = ["NoSteering"]


class NoSteering(SteeringMethod):
    name = "none"
    summary = "the plain cached context, unsteered"

    def key_fields(self, config: SteerConfig) -> dict:
        return {"method": "none"}

    def store_keys(self, steerer, prepared, config) -> list[str]:
        return [prepared.key]

    def build(self, job: BuildJob) -> PreparedContext:
        kv = job.base_kv if job.base_kv is not None else job.stored_or_prefilled_kv()
        return plain_context(job.engine, job.head, job.context_ids, kv, time.perf_counter() - job.start)
