"""Plain WSGI example: ``gunicorn examples.wsgi_app:app``.

Settings come from ``SESSIONMW_*`` environment variables, for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db gunicorn examples.wsgi_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` is exempt. The
lifecycle routes: ``POST /login`` (exempt; demo only, body ``{"user_id": "..."}``: a
real app authenticates first), ``POST /logout``, ``POST /logout-others`` and
``GET /devices``. On first run the SQL table is created.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from examples._store import login_user_id, prepare_store
from sessionmw import BusUnavailable, SessionRecord, Settings
from sessionmw.wsgi import DeviceSessionMiddleware, sessions

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

EXEMPT = ("/healthz", "/login")
#: Largest login body read.
MAX_BODY = 4096
#: path -> the methods it answers.
METHODS = {
    "/healthz": ("GET", "HEAD"),
    "/whoami": ("GET", "HEAD"),
    "/devices": ("GET", "HEAD"),
    "/login": ("POST",),
    "/logout": ("POST",),
    "/logout-others": ("POST",),
}


def _send(
    start_response: StartResponse, status: str, body: bytes, content_type: str
) -> Iterable[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response: StartResponse, status: str, value: Any) -> Iterable[bytes]:
    return _send(start_response, status, json.dumps(value).encode(), "application/json")


def _body(environ: WSGIEnvironment) -> bytes | None:
    """The request body, or ``None`` when it is missing a sane Content-Length."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or "0")
    except ValueError:
        return None
    if not 0 < length <= MAX_BODY:
        return None
    body: bytes = environ["wsgi.input"].read(length)
    return body


def _route(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _send(start_response, "200 OK", b"ok", "text/plain")
    if path == "/login":
        body = _body(environ)
        user_id = login_user_id(body) if body is not None else None  # demo: authenticate
        if user_id is None:
            return _json(start_response, "400 Bad Request", {"error": "invalid_request"})
        session = sessions(environ).create(user_id)
        return _json(start_response, "200 OK", {"session_id": session.session_id})
    current: SessionRecord = environ["sessionmw.session"]
    if path == "/whoami":
        answer: Any = {"user_id": current.user_id, "session_id": current.session_id}
    elif path == "/logout":
        answer = {"revoked": sessions(environ).revoke(current.session_id)}
    elif path == "/logout-others":
        keep = current.session_id
        answer = {"revoked": sessions(environ).revoke_user(current.user_id, keep=keep)}
    else:  # /devices
        answer = [
            {
                "session_id": s.session_id,
                "issued_at": s.issued_at,
                "last_seen": s.last_seen,
                "current": s.session_id == current.session_id,
            }
            for s in sessions(environ).list(current.user_id)
        ]
    return _json(start_response, "200 OK", answer)


def routes(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    allowed = METHODS.get(path)
    if allowed is None:
        return _json(start_response, "404 Not Found", {"error": "not_found"})
    if environ.get("REQUEST_METHOD") not in allowed:
        start_response(
            "405 Method Not Allowed", [("Allow", ", ".join(allowed)), ("Content-Length", "0")]
        )
        return []
    try:
        return _route(environ, start_response)
    except BusUnavailable:
        # The store is already right; the other workers learn of it within
        # bus_outage_ttl (ttl at worst). Retrying the call is safe.
        start_response(
            "503 Service Unavailable", [("Content-Type", "application/json"), ("Retry-After", "1")]
        )
        return [b'{"error": "bus_unavailable"}']


def create_app(settings: Settings | None = None) -> WSGIApplication:
    """The example app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    missing = [path for path in EXEMPT if path not in settings.exempt_paths]
    if missing:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, *missing])
    prepare_store(settings)
    return DeviceSessionMiddleware(routes, settings)


app = create_app()
