"""User-facing errors.

Every error a user can cause derives from :class:`SteercError` and carries a one-line
message that says what was wrong and what to do about it. The CLI prints exactly that
line (the traceback only with ``--debug``) and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "SteercError",
    "ModelNotFoundError",
    "UnsupportedArchitectureError",
    "MissingDependencyError",
    "EngineError",
    "PassError",
    "VerificationError",
]


class SteercError(Exception):
    """Base class of errors caused by input; ``str(err)`` is the one-line message."""

    exit_code = 2


class ModelNotFoundError(SteercError):
    """The model id, folder or file cannot be found."""


class UnsupportedArchitectureError(SteercError):
    """The model loads but steerc cannot compile it."""


class MissingDependencyError(SteercError):
    """An optional dependency is not installed."""


class EngineError(SteercError):
    """An engine folder is missing, partial, corrupt, or already exists."""


class PassError(SteercError):
    """A graph pass found nothing to rewrite, or a graph it cannot rewrite."""


class VerificationError(SteercError):
    """A compiled engine does not reproduce its eager reference."""


def require(module: str, purpose: str, install: str | None = None):
    """Import an optional dependency or raise :class:`MissingDependencyError` with the fix."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        hint = install or f"pip install {module}"
        raise MissingDependencyError(f"{purpose} needs the '{module}' package, which is not installed: run `{hint}`") from exc
