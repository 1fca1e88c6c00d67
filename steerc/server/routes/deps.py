"""The routes' dependencies: the server's state (``State``) and the API key check (``authorized``)."""

from typing import Annotated

from fastapi import Depends, Request

from steerc.server.limits import check_api_key
from steerc.server.state import ServerState

__all__ = ["State", "authorized", "server_state"]


async def server_state(request: Request) -> ServerState:
    """The :class:`~steerc.server.state.ServerState` of the app serving ``request``."""
    return request.app.state.steerc


State = Annotated[ServerState, Depends(server_state)]


async def authorized(request: Request) -> None:
    """401 unless the request carries the server's API key (when it has one)."""
    check_api_key(request.app.state.steerc.settings.api_key, request.headers.get("authorization"))
