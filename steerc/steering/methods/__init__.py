"""Steering methods: one object per method behind one interface (:class:`SteeringMethod`).

    from steerc.steering.methods import get_method
    method = get_method("query")        # prepare / plan hooks; see steerc.steering.methods.base
    method.options                      # its own settings: a MethodOptions dataclass (config.options)

Each method lives in its own module, with its options. The methods are named in one registry,
:mod:`steerc.steering.registry` (a ``"module:Class"`` path per name, imported on first use); a
new method is its module plus one line there, or one :func:`register_method` call.
:data:`METHODS` is a live, read-only view of the registry (name -> method).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from steerc.steering.methods.base import Evidence, EvidenceDistribution, QueryPlan, SteeringMethod
from steerc.steering.registry import get_method, method_names, register_method

__all__ = ["Evidence", "EvidenceDistribution", "METHODS", "QueryPlan", "SteeringMethod", "get_method", "method_names", "register_method"]


class _Methods(Mapping):
    """The registered methods by name (resolved on access)."""

    def __getitem__(self, name: str) -> SteeringMethod:
        if name not in method_names():
            raise KeyError(name)
        return get_method(name)

    def __iter__(self) -> Iterator[str]:
        return iter(method_names())

    def __len__(self) -> int:
        return len(method_names())

    def __repr__(self) -> str:
        return f"<steering methods {', '.join(method_names())}>"


METHODS: Mapping[str, SteeringMethod] = _Methods()
