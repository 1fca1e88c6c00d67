"""``RequestBodies``: the request models the routes are built with, chosen when the app is built.

:func:`request_bodies` is called once per :func:`~steerc.server.app.create_app`, so a model
made at that moment (from what is registered then) is what the routes validate with and what
the OpenAPI schema shows. Routes take the classes from here, never from
:mod:`steerc.server.schemas` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from steerc.server.schemas import DocumentRequest, request_models

__all__ = ["RequestBodies", "request_bodies"]


@dataclass(frozen=True)
class RequestBodies:
    """``completion``: ``POST /v1/completions``; ``chat``: ``POST /v1/chat/completions``;
    ``context``: ``POST /v1/contexts``; ``document``: ``POST /v1/documents``."""

    completion: type[BaseModel]
    chat: type[BaseModel]
    context: type[BaseModel]
    document: type[BaseModel] = DocumentRequest

    def __post_init__(self) -> None:
        for name in ("completion", "chat", "context", "document"):
            model = getattr(self, name)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ValueError(f"{name} must be a pydantic model class, got {model!r}")


def request_bodies() -> RequestBodies:
    """The request models of an app being built now (their ``steer`` schema: the methods registered now)."""
    models = request_models()
    return RequestBodies(models.completion, models.chat, models.context)
