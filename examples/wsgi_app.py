"""Plain WSGI example: ``gunicorn examples.wsgi_app:app``.

Settings come from ``SESSIONMW_*`` environment variables, for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db gunicorn examples.wsgi_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` is exempt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sessionmw import SessionRecord, Settings
from sessionmw.wsgi import DeviceSessionMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def _send(
    start_response: StartResponse, status: str, body: bytes, content_type: str
) -> Iterable[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def routes(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path in ("/healthz", "/whoami") and environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
        return []
    if path == "/healthz":
        return _send(start_response, "200 OK", b"ok", "text/plain")
    if path == "/whoami":
        record: SessionRecord = environ["sessionmw.session"]
        body = json.dumps({"user_id": record.user_id, "session_id": record.session_id})
        return _send(start_response, "200 OK", body.encode(), "application/json")
    return _send(start_response, "404 Not Found", b'{"error": "not_found"}', "application/json")


def create_app(settings: Settings | None = None) -> WSGIApplication:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    if "/healthz" not in settings.exempt_paths:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, "/healthz"])
    return DeviceSessionMiddleware(routes, settings)


app = create_app()
