"""``steerc.server``: an OpenAI-compatible HTTP server over a steerc engine (FastAPI + uvicorn).

    from steerc.runtime import Engine
    from steerc.server import ServerSettings, create_app
    app = create_app(Engine.load("engines/smollm2-135m-instruct"), ServerSettings(max_concurrency=2))

:func:`create_app` (:mod:`~steerc.server.app`) assembles the parts: the routes
(:mod:`~steerc.server.routes`, one module per resource, request bodies from
:mod:`~steerc.server.bodies`, generated per app so every registered steering method's options
are in the schema), admission and worker threads (:mod:`~steerc.server.scheduling`), the answers
(:mod:`~steerc.server.service`, :mod:`~steerc.server.answers`), registered contexts
(:mod:`~steerc.server.registry`), error handlers (:mod:`~steerc.server.errors`), limits,
metrics and the state they share (:mod:`~steerc.server.state`).

Needs the ``serve`` extra (``pip install 'steerc[serve]'``); ``steerc serve ENGINE`` runs it.
"""

from steerc.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(*args, **kwargs):
    """See :func:`steerc.server.app.create_app` (imported on first use: FastAPI is optional)."""
    from steerc.errors import require

    require("fastapi", "steerc serve", "pip install 'steerc[serve]'")
    from steerc.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)
