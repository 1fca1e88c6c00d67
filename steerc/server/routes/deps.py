"""The routes' dependencies: the server's state (``State``) and the API key check (``authorized``)."""

from typing import Annotated

from fastapi import Depends, Request

from steerc.server.state import ServerState

__all__ = ["State", "authorized", "server_state"]


async def server_state(request: Request) -> ServerState:
    """The :class:`~steerc.server.state.ServerState` of the app serving ``request``."""
    return request.app.state.steerc


State = Annotated[ServerState, Depends(server_state)]


async def authorized(request: Request) -> None:
    """401 unless the request carries one of the server's API keys (when it has any); the key's
    tenant goes to ``request.state.tenant`` (None: the one-tenant case)."""
    request.state.tenant = request.app.state.steerc.service.tenants.check(request.headers.get("authorization"))
