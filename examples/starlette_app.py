"""Starlette example: ``uvicorn examples.starlette_app:app``.

Settings come from ``SESSIONMW_*`` environment variables (``Settings.from_env()``),
for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db \\
    SESSIONMW_INVALIDATION_SECRET=whsec_... \\
        uvicorn examples.starlette_app:app

Routes:

* ``GET /whoami``: the session's user and ID.
* ``GET /healthz``: ``ok``; always exempt (added to ``exempt_paths``).
* ``POST /login`` (exempt): body ``{"user_id": "..."}``, answers ``{"session_id": ...}``.
  Demo only: a real app authenticates the user first.
* ``POST /logout``: revokes this session, ``{"revoked": true}``.
* ``POST /logout-others``: revokes the user's other sessions, ``{"revoked": N}``.
* ``GET /devices``: the user's sessions, newest first.

On first run the SQL table is created (:func:`examples._store.prepare_store`). With a
secret set, the signed invalidation hook is served at ``invalidation_path``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from examples._store import login_user_id, prepare_store
from sessionmw import BusUnavailable, SessionRecord, Settings
from sessionmw.asgi import DeviceSessionMiddleware, sessions

EXEMPT = ("/healthz", "/login")


async def whoami(request: Request) -> JSONResponse:
    record: SessionRecord = request.state.device_session
    return JSONResponse({"user_id": record.user_id, "session_id": record.session_id})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def login(request: Request) -> JSONResponse:
    user_id = login_user_id(await request.body())  # demo: authenticate here instead
    if user_id is None:
        return JSONResponse({"error": "invalid_request"}, status_code=400)
    session = await sessions(request).acreate(user_id)
    return JSONResponse({"session_id": session.session_id})


async def logout(request: Request) -> JSONResponse:
    current: SessionRecord = request.state.device_session
    revoked = await sessions(request).arevoke(current.session_id)
    return JSONResponse({"revoked": revoked})


async def logout_others(request: Request) -> JSONResponse:
    current: SessionRecord = request.state.device_session
    count = await sessions(request).arevoke_user(current.user_id, keep=current.session_id)
    return JSONResponse({"revoked": count})


async def devices(request: Request) -> JSONResponse:
    current: SessionRecord = request.state.device_session
    listed = await sessions(request).alist(current.user_id)
    return JSONResponse([
        {
            "session_id": s.session_id,
            "issued_at": s.issued_at,
            "last_seen": s.last_seen,
            "current": s.session_id == current.session_id,
        }
        for s in listed
    ])  # fmt: skip


async def bus_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The store is already right; the other workers learn of it within bus_outage_ttl
    # (ttl at worst). Retrying the call is safe.
    return JSONResponse({"error": "bus_unavailable"}, status_code=503, headers={"Retry-After": "1"})


def create_app(settings: Settings | None = None) -> Starlette:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    missing = [path for path in EXEMPT if path not in settings.exempt_paths]
    if missing:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, *missing])
    prepare_store(settings)
    return Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/healthz", healthz),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/logout-others", logout_others, methods=["POST"]),
            Route("/devices", devices),
        ],
        middleware=[Middleware(DeviceSessionMiddleware, settings)],
        exception_handlers={BusUnavailable: bus_unavailable},
    )


app = create_app()
