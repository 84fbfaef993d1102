"""Whatever reaches the middleware or the hook, the answer is one of the SPEC's.

Hypothesis throws arbitrary header bytes, methods, paths and hook bodies at the pure
ASGI and the plain WSGI middleware in-process, and arbitrary ``Content-Length`` values
at the hook of every sync adapter and of Django's ASGI handler; every answer must be a
status the SPEC names (or the app's own 200), never a 500 or an exception.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples import flask_app, wsgi_app
from sessionmw import SessionRecord, SessionStatus, Settings
from sessionmw.asgi import DeviceSessionMiddleware as ASGIMiddleware
from sessionmw.backends import MemoryBackend
from sessionmw.contrib.django.asgi import guard
from sessionmw.signing import new_secret, sign, signed_request
from sessionmw.wsgi import DeviceSessionMiddleware as WSGIMiddleware
from tests import django_settings, hook_cases

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

django_settings.setup()

SECRET = new_secret()
HOOK = "/_internal/session-invalidation"
GATE_STATUSES = {200, 401, 503}
HOOK_STATUSES = {200, 400, 401, 405, 413}

_now = time.time()
BACKEND = MemoryBackend([SessionRecord("good", "u1", SessionStatus.ACTIVE, _now + 3600, _now)])
SETTINGS: dict[str, Any] = {"backend": BACKEND, "invalidation_secret": SECRET}


async def _ok_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _ok_wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


ASGI_APP = ASGIMiddleware(_ok_asgi, **SETTINGS)  # type: ignore[arg-type]
WSGI_APP = WSGIMiddleware(_ok_wsgi, **SETTINGS)

header_names = st.sampled_from(
    [b"x-device-session-id", b"X-Device-Session-ID", b"webhook-id", b"webhook-timestamp",
     b"webhook-signature", b"content-length", b"x-other"]
)  # fmt: skip
raw_headers = st.lists(st.tuples(header_names, st.binary(max_size=300)), max_size=6)
methods = st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "DELETE", "HEAD"])
paths = st.sampled_from(["/", "/whoami", HOOK, HOOK + "/x", "/_internal"])


def _asgi_call(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "query_string": b"", "http_version": "1.1", "scheme": "http"}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ASGI_APP(scope, receive, send))  # type: ignore[arg-type]
    return int(sent[0]["status"])


def _wsgi_call(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }  # fmt: skip
    for name, value in headers:
        key = name.decode().upper().replace("-", "_")
        key = key if key == "CONTENT_LENGTH" else "HTTP_" + key
        text = value.decode("latin-1")
        # A WSGI server joins a repeated header with a comma.
        environ[key] = environ[key] + "," + text if key in environ else text
    statuses: list[str] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)

    for _ in WSGI_APP(environ, start_response):
        pass
    return int(statuses[0].split()[0])


def _expected(method: str, path: str) -> set[int]:
    if path == HOOK:
        return HOOK_STATUSES
    return GATE_STATUSES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(methods, paths, raw_headers, st.binary(max_size=2000))
def test_any_request_gets_a_spec_answer(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Random methods, paths, header bytes and bodies: only SPEC statuses, same in both."""
    asgi_status = _asgi_call(method, path, headers, body)
    wsgi_status = _wsgi_call(method, path, headers, body)
    assert asgi_status in _expected(method, path)
    assert wsgi_status in _expected(method, path)


signature_parts = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, b: f"{a},{b}", st.sampled_from(["v1", "v2", ""]), st.text(max_size=60)),
)


@settings(max_examples=300, deadline=None)
@given(
    msg_id=st.text(max_size=40),
    timestamp=st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(str)),
    signature=st.lists(signature_parts, max_size=4).map(" ".join),
    body=st.binary(max_size=500),
)
def test_garbage_signature_headers_are_401(
    msg_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    """Whatever the signature headers hold, an unsigned body is refused with 401."""
    headers = [
        (b"webhook-id", msg_id.encode("utf-8", "surrogateescape")),
        (b"webhook-timestamp", timestamp.encode("utf-8", "surrogateescape")),
        (b"webhook-signature", signature.encode("utf-8", "surrogateescape")),
    ]
    assert _asgi_call("POST", HOOK, headers, body) == 401
    assert _wsgi_call("POST", HOOK, headers, body) == 401


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=3),
                    max_leaves=10))  # fmt: skip
def test_signed_garbage_payloads_are_400_or_applied(document: Any) -> None:
    """A validly signed body of any JSON shape is 400, or 200 if it happens to be valid."""
    events = document if isinstance(document, list) else [document]
    for payload in ({"events": events}, document):
        body = json.dumps(payload).encode()
        headers, _ = signed_request(SECRET, [])
        # Re-sign this exact body.
        headers["webhook-signature"] = sign(
            SECRET, headers["webhook-id"], int(headers["webhook-timestamp"]), body
        )
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        assert _asgi_call("POST", HOOK, raw, body) in {200, 400}


# -- a malformed Content-Length on the hook, through every sync adapter and Django ASGI --

_HOOK_SETTINGS = hook_cases.hook_settings()
_FLASK_APP = flask_app.create_app(Settings(**_HOOK_SETTINGS))
_WSGI_HOOK_APP = wsgi_app.create_app(Settings(**_HOOK_SETTINGS))
_HOOK_ANSWERS = {400, 401, 413}  # invalid_payload, invalid_signature (unsigned), too large

content_lengths = st.one_of(
    st.binary(max_size=30),
    st.text(alphabet="0123456789 ,+-_.xeE\t\u00b2\u0661\u0662\uff11\u00bd", max_size=30).map(
        str.encode
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode()),
)


def _raw_hook_environ(length: bytes, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": HOOK, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver", "CONTENT_LENGTH": length.decode("latin-1"),
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }  # fmt: skip


def _wsgi_status(app: Any, environ: dict[str, Any]) -> int:
    statuses: list[str] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)

    result = app(environ, start_response)
    for _ in result:
        pass
    getattr(result, "close", lambda: None)()
    return int(statuses[0].split()[0])


def _django_asgi_status(app: Any, length: bytes, body: bytes) -> int:
    scope = {"type": "http", "method": "POST", "path": HOOK, "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-length", length)],
             "query_string": b"", "http_version": "1.1", "scheme": "http",
             "server": ("testserver", 80)}  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def go() -> None:
        done = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)

    asyncio.run(go())
    return int(sent[0]["status"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content_lengths, st.binary(max_size=300))
def test_any_content_length_on_the_hook(length: bytes, body: bytes) -> None:
    """Whatever Content-Length the hook gets, every adapter answers 400, 401 or 413:
    plain WSGI, Flask, Django's WSGI handler, Django's ASGI handler with and without
    the guard. Never a 500, never an exception."""
    statuses = {
        "wsgi": _wsgi_status(_WSGI_HOOK_APP, _raw_hook_environ(length, body)),
        "flask": _wsgi_status(_FLASK_APP, _raw_hook_environ(length, body)),
    }
    with override_settings(SESSIONMW=_HOOK_SETTINGS):
        statuses["django"] = _wsgi_status(WSGIHandler(), _raw_hook_environ(length, body))
        handler = ASGIHandler()
        statuses["django_asgi"] = _django_asgi_status(handler, length, body)
        statuses["django_guarded"] = _django_asgi_status(guard(handler), length, body)
    assert set(statuses.values()) <= _HOOK_ANSWERS, (length, statuses)
    assert len(set(statuses.values())) == 1, (length, statuses)
