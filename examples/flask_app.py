"""Flask example: ``gunicorn examples.flask_app:app``.

Settings come from ``SESSIONMW_*`` environment variables (``Settings.from_env()``),
for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db gunicorn examples.flask_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` is exempt. The
lifecycle routes: ``POST /login`` (exempt; demo only, body ``{"user_id": "..."}``: a
real app authenticates first), ``POST /logout``, ``POST /logout-others`` and
``GET /devices``. On first run the SQL table is created.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g, request

from examples._store import login_user_id, prepare_store
from sessionmw import BusUnavailable, Settings
from sessionmw.contrib.flask import SessionMW, exempt
from sessionmw.sessions import Sessions


def lifecycle() -> Sessions:
    """The :class:`~sessionmw.Sessions` of this app's gate."""
    sessions: Sessions = current_app.extensions["sessionmw"].sessions
    return sessions


def create_app(settings: Settings | None = None) -> Flask:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    if "/healthz" not in settings.exempt_paths:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, "/healthz"])
    app = Flask(__name__)
    SessionMW(app, settings=settings)
    prepare_store(app.extensions["sessionmw"].settings)

    @app.get("/whoami")
    def whoami() -> dict[str, str]:
        record = g.device_session
        return {"user_id": record.user_id, "session_id": record.session_id}

    @app.get("/healthz")
    @exempt
    def healthz() -> str:
        return "ok"

    @app.post("/login")
    @exempt
    def login() -> Any:
        user_id = login_user_id(request.get_data())  # demo: authenticate here instead
        if user_id is None:
            return {"error": "invalid_request"}, 400
        return {"session_id": lifecycle().create(user_id).session_id}

    @app.post("/logout")
    def logout() -> dict[str, bool]:
        return {"revoked": lifecycle().revoke(g.device_session.session_id)}

    @app.post("/logout-others")
    def logout_others() -> dict[str, int]:
        current = g.device_session
        return {"revoked": lifecycle().revoke_user(current.user_id, keep=current.session_id)}

    @app.get("/devices")
    def devices() -> list[dict[str, Any]]:
        current = g.device_session
        return [
            {
                "session_id": s.session_id,
                "issued_at": s.issued_at,
                "last_seen": s.last_seen,
                "current": s.session_id == current.session_id,
            }
            for s in lifecycle().list(current.user_id)
        ]

    @app.errorhandler(BusUnavailable)
    def bus_unavailable(exc: BusUnavailable) -> Any:
        # The store is already right; the other workers learn of it within
        # bus_outage_ttl (ttl at worst). Retrying the call is safe.
        return {"error": "bus_unavailable"}, 503, {"Retry-After": "1"}

    return app


app = create_app()
