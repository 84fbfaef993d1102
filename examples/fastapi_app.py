"""FastAPI example: ``uvicorn examples.fastapi_app:app``.

Settings come from ``SESSIONMW_*`` environment variables (``Settings.from_env()``),
for instance::

    SESSIONMW_BACKEND=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app

Routes get the session through a dependency (:func:`device_session`), so they declare
what they need and stay testable (override it with ``app.dependency_overrides``).
``GET /healthz`` answers ``ok`` and is always exempt.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from sessionmw import SessionRecord, Settings
from sessionmw.asgi import DeviceSessionMiddleware


def device_session(request: Request) -> SessionRecord:
    """The checked session of this request (the middleware put it there)."""
    record: SessionRecord = request.state.device_session
    return record


Session = Annotated[SessionRecord, Depends(device_session)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    if "/healthz" not in settings.exempt_paths:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, "/healthz"])
    app = FastAPI(title="sessionmw FastAPI example")
    app.add_middleware(DeviceSessionMiddleware, settings)

    @app.get("/whoami")
    async def whoami(session: Session) -> dict[str, str]:
        return {"user_id": session.user_id, "session_id": session.session_id}

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    return app


app = create_app()
