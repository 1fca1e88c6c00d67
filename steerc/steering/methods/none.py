"""``none``: the plain prefix-cached context, no steering (the baseline every method is paired against)."""

from __future__ import annotations

from steerc.steering.config import SteerConfig
from steerc.steering.contexts import BuildJob, prepare_plain
from steerc.steering.methods.base import SteeringMethod
from steerc.steering.prepared import PreparedContext

__all__ = ["NoSteering"]


class NoSteering(SteeringMethod):
    name = "none"
    summary = "the plain cached context, unsteered"

    def key_fields(self, config: SteerConfig) -> dict:
        return {"method": "none"}

    def store_keys(self, ctx, prepared, config) -> list[str]:
        return [prepared.key]

    def prepare(self, ctx, context: str, config: SteerConfig, progress=None) -> tuple[PreparedContext, str]:
        return prepare_plain(ctx, context, config, progress)

    def build(self, job: BuildJob) -> PreparedContext:
        return job.plain()
