"""Steering methods: one object per method behind one interface (:class:`SteeringMethod`).

    from steerc.steering.methods import get_method
    method = get_method("query")        # prepare / plan hooks; see steerc.steering.methods.base

Each method lives in its own module; :data:`METHODS` lists them by name. A new method is a
:class:`SteeringMethod` subclass added to ``_ALL``.
"""

from __future__ import annotations

from steerc.steering.config import METHODS as CONFIG_METHODS
from steerc.steering.methods.autopasta import AutoPasta
from steerc.steering.methods.base import Evidence, QueryPlan, SteeringMethod
from steerc.steering.methods.llmsteer import LLMSteer
from steerc.steering.methods.none import NoSteering
from steerc.steering.methods.pasta import Pasta
from steerc.steering.methods.qllm import QLLM
from steerc.steering.methods.query import QueryEvidence

__all__ = ["Evidence", "METHODS", "QueryPlan", "SteeringMethod", "get_method"]

_ALL: tuple[SteeringMethod, ...] = (NoSteering(), QueryEvidence(), QLLM(), LLMSteer(), Pasta(), AutoPasta())
METHODS: dict[str, SteeringMethod] = {m.name: m for m in _ALL}
if tuple(METHODS) != CONFIG_METHODS:  # SteerConfig validates names without importing the methods
    raise ImportError(f"steering methods {tuple(METHODS)} and SteerConfig's METHODS {CONFIG_METHODS} disagree")


def get_method(name: str) -> SteeringMethod:
    """The method called ``name``; a ``ValueError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown steering method {name!r}: choose from {', '.join(METHODS)}") from None
