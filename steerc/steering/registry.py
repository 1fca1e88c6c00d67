"""The steering methods by name: the one registry, resolved lazily.

Each entry maps a method name to its :class:`~steerc.steering.methods.base.SteeringMethod`,
given as a ``"module:Class"`` path that is imported only when the method is first asked for
(as vLLM's attention-backend registry does), or as a class or an instance. The config, the
CLI flags, the server schema and the evaluation all read the methods from here, so this
module imports none of them: :class:`~steerc.steering.config.SteerConfig` can look a method's
options up without an import cycle.

A new method is one module (its ``SteeringMethod`` subclass and its
:class:`~steerc.steering.options.MethodOptions`) plus one line in ``_BUILTIN``, or one
:func:`register_method` call from outside the package (its return value undoes it).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from steerc.lazy_import import import_path

if TYPE_CHECKING:
    from steerc.steering.methods.base import SteeringMethod
    from steerc.steering.options import MethodOptions

__all__ = ["register_method", "method_names", "get_method", "options_class", "Registration"]

# In the order methods are listed (help, errors, the OpenAPI schema).
_BUILTIN = {
    "none": "steerc.steering.methods.none:NoSteering",
    "query": "steerc.steering.methods.query:QueryEvidence",
    "qllm": "steerc.steering.methods.qllm:QLLM",
    "llmsteer": "steerc.steering.methods.llmsteer:LLMSteer",
    "pasta": "steerc.steering.methods.pasta:Pasta",
    "autopasta": "steerc.steering.methods.autopasta:AutoPasta",
}

_entries: dict[str, Any] = dict(_BUILTIN)  # name -> "module:Class", a class or an instance
_resolved: dict[str, SteeringMethod] = {}
_lock = threading.Lock()


class Registration(contextlib.AbstractContextManager):
    """A registered method; ``undo()`` (or leaving the ``with`` block) removes it again."""

    def __init__(self, name: str, previous: Any) -> None:
        self.name, self._previous = name, previous

    def undo(self) -> None:
        with _lock:
            _resolved.pop(self.name, None)
            if self._previous is None:
                _entries.pop(self.name, None)
            else:
                _entries[self.name] = self._previous

    def __exit__(self, *exc) -> None:
        self.undo()


def register_method(name: str, method: Any, *, replace: bool = False) -> Registration:
    """Register ``method`` (a ``"module:Class"`` path, a SteeringMethod subclass or instance) as
    ``name``. A name already taken is refused unless ``replace``."""
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a method name must be a non-empty word, got {name!r}")
    with _lock:
        previous = _entries.get(name)
        if previous is not None and not replace:
            raise ValueError(f"steering method {name!r} is registered already (pass replace=True to replace it)")
        _entries[name] = method
        _resolved.pop(name, None)
    return Registration(name, previous)


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_entries)


def get_method(name: str) -> SteeringMethod:
    """The method called ``name`` (imported on first use); a ``ValueError`` naming the known ones otherwise."""
    method = _resolved.get(name)
    if method is not None:
        return method
    with _lock:
        entry = _entries.get(name)
    if entry is None:
        raise ValueError(f"unknown steering method {name!r}: choose from {', '.join(_entries)}")
    if isinstance(entry, str):
        entry = import_path(entry)
    method = entry() if isinstance(entry, type) else entry
    if method.name != name:
        raise ValueError(f"steering method registered as {name!r} calls itself {method.name!r}")
    with _lock:
        if _entries.get(name) is not None:
            _resolved[name] = method
    return method


def options_class(name: str) -> type[MethodOptions]:
    """The options dataclass of the method called ``name``."""
    return get_method(name).options
