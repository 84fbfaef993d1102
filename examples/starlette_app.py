"""Starlette example: ``uvicorn examples.starlette_app:app``.

Settings come from ``SESSIONMW_*`` environment variables (``Settings.from_env()``),
for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db \\
    SESSIONMW_INVALIDATION_SECRET=whsec_... \\
        uvicorn examples.starlette_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` answers ``ok``
and is always exempt (added to ``exempt_paths`` when the environment leaves it out).
With a secret set, the signed invalidation hook is served at ``invalidation_path``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from sessionmw import SessionRecord, Settings
from sessionmw.asgi import DeviceSessionMiddleware


async def whoami(request: Request) -> JSONResponse:
    record: SessionRecord = request.state.device_session
    return JSONResponse({"user_id": record.user_id, "session_id": record.session_id})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def create_app(settings: Settings | None = None) -> Starlette:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    if "/healthz" not in settings.exempt_paths:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, "/healthz"])
    return Starlette(
        routes=[Route("/whoami", whoami), Route("/healthz", healthz)],
        middleware=[Middleware(DeviceSessionMiddleware, settings)],
    )


app = create_app()
