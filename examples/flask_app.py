"""Flask example: ``gunicorn examples.flask_app:app``.

Settings come from ``SESSIONMW_*`` environment variables (``Settings.from_env()``),
for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db gunicorn examples.flask_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` is exempt.
"""

from __future__ import annotations

from flask import Flask, g

from sessionmw import Settings
from sessionmw.contrib.flask import SessionMW, exempt


def create_app(settings: Settings | None = None) -> Flask:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    if "/healthz" not in settings.exempt_paths:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, "/healthz"])
    app = Flask(__name__)
    SessionMW(app, settings=settings)

    @app.get("/whoami")
    def whoami() -> dict[str, str]:
        record = g.device_session
        return {"user_id": record.user_id, "session_id": record.session_id}

    @app.get("/healthz")
    @exempt
    def healthz() -> str:
        return "ok"

    return app


app = create_app()
