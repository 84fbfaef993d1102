"""FastAPI example: ``uvicorn examples.fastapi_app:app``.

Settings come from ``SESSIONMW_*`` environment variables (``Settings.from_env()``),
for instance::

    SESSIONMW_BACKEND=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app

Routes get the session and the :class:`~sessionmw.Sessions` through the dependencies
of :mod:`sessionmw.contrib.fastapi` (``DeviceSession``, ``SessionsDep``), so they
declare what they need, ``/docs`` offers "Authorize" for the session header, and tests
can override them (``app.dependency_overrides[device_session]``). ``/docs`` loads
Swagger UI from this server (the ``swagger-ui-bundle`` package), not from a CDN.
``GET /healthz``, ``POST /login`` and the API docs (``/docs``, ``/redoc``,
``/openapi.json``) are exempt. The lifecycle routes are the same as the other
examples': ``POST /login`` (demo only: a real app authenticates first),
``POST /logout``, ``POST /logout-others``, ``GET /devices``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from examples._store import MAX_USER_ID, prepare_store
from sessionmw import BusUnavailable, Settings
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.contrib.fastapi import DeviceSession, SessionsDep, local_swagger_ui

EXEMPT = ("/healthz", "/login", "/docs", "/redoc", "/openapi.json")


class Login(BaseModel):
    """Demo login body: a real app authenticates the user first."""

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID)


class Device(BaseModel):
    session_id: str
    issued_at: float | None
    last_seen: float | None
    current: bool


def create_app(settings: Settings | None = None) -> FastAPI:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    missing = [path for path in EXEMPT if path not in settings.exempt_paths]
    if missing:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, *missing])
    prepare_store(settings)
    app = FastAPI(title="sessionmw FastAPI example")
    app.add_middleware(DeviceSessionMiddleware, settings)
    local_swagger_ui(app)  # /docs with Swagger UI's files served from here

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # 400 like the other examples (FastAPI's default is 422).
        return JSONResponse({"error": "invalid_request"}, status_code=400)

    @app.exception_handler(BusUnavailable)
    async def bus_unavailable(request: Request, exc: BusUnavailable) -> JSONResponse:
        # The store is already right; the other workers learn of it within
        # bus_outage_ttl (ttl at worst). Retrying the call is safe.
        return JSONResponse(
            {"error": "bus_unavailable"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.get("/whoami")
    async def whoami(session: DeviceSession) -> dict[str, str]:
        return {"user_id": session.user_id, "session_id": session.session_id}

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.post("/login")
    async def login(body: Login, lifecycle: SessionsDep) -> dict[str, str]:
        created = await lifecycle.acreate(body.user_id)
        return {"session_id": created.session_id}

    @app.post("/logout")
    async def logout(session: DeviceSession, lifecycle: SessionsDep) -> dict[str, Any]:
        return {"revoked": await lifecycle.arevoke(session.session_id)}

    @app.post("/logout-others")
    async def logout_others(session: DeviceSession, lifecycle: SessionsDep) -> dict[str, int]:
        count = await lifecycle.arevoke_user(session.user_id, keep=session.session_id)
        return {"revoked": count}

    @app.get("/devices")
    async def devices(session: DeviceSession, lifecycle: SessionsDep) -> list[Device]:
        return [
            Device(
                session_id=s.session_id,
                issued_at=s.issued_at,
                last_seen=s.last_seen,
                current=s.session_id == session.session_id,
            )
            for s in await lifecycle.alist(session.user_id)
        ]

    return app


app = create_app()
