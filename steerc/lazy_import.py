"""What the registries (steering methods, backends, backing stores) name: ``"module:Name"``
paths, imported only when the entry is chosen, so an optional package stays optional."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_path"]


def import_path(path: str) -> Any:
    """The object at ``"package.module:Name"``, its module imported now."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"a registry path is 'module:Name', got {path!r}")
    return getattr(importlib.import_module(module), name)
