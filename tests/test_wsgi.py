"""The plain WSGI middleware: record placement, strict headers, the hook and its body limit."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from sessionmw import ConfigError, SessionRecord, Settings
from sessionmw._body import MAX_BODY
from sessionmw._environ import environ_key, read_body
from sessionmw.backends import MemoryBackend
from sessionmw.signing import new_secret, signed_request
from sessionmw.wsgi import ENVIRON_KEY, DeviceSessionMiddleware
from tests.hook_cases import HOOK_PATH as HOOK
from tests.spec_cases import two_sessions

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SECRET = new_secret()
pytestmark = pytest.mark.usefixtures("fresh_gates")


@pytest.fixture
def backend() -> MemoryBackend:
    return two_sessions()


class Inner:
    """The wrapped app: records what reached it."""

    def __init__(self) -> None:
        self.environs: list[WSGIEnvironment] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"inner"]


def call(app: Any, environ: WSGIEnvironment) -> tuple[int, dict[str, str], bytes]:
    body_iter, status, headers = run_wsgi_app(app, environ)
    body = b"".join(body_iter)
    return int(status.split()[0]), {k.lower(): v for k, v in headers.items()}, body


def environ_for(path: str = "/", method: str = "GET", **extra: Any) -> WSGIEnvironment:
    environ: WSGIEnvironment = EnvironBuilder(path=path, method=method).get_environ()
    environ.update(extra)
    return environ


def test_record_in_environ(backend: MemoryBackend) -> None:
    """A valid session reaches the app with the record at environ["sessionmw.session"]."""
    inner = Inner()
    app = DeviceSessionMiddleware(inner, backend=backend)
    status, _, body = call(app, environ_for(HTTP_X_DEVICE_SESSION_ID="good"))
    assert (status, body) == (200, b"inner")
    record = inner.environs[0][ENVIRON_KEY]
    assert isinstance(record, SessionRecord)
    assert record.user_id == "u1"


def test_rejection_never_reaches_app(backend: MemoryBackend) -> None:
    """401 answers come from the middleware; the app is not called."""
    inner = Inner()
    app = DeviceSessionMiddleware(inner, backend=backend)
    status, headers, body = call(app, environ_for(HTTP_X_DEVICE_SESSION_ID="nope"))
    assert status == 401
    assert json.loads(body) == {"error": "invalid_session"}
    assert headers["content-length"] == str(len(body))
    assert inner.environs == []


def test_head_rejection_has_no_body(backend: MemoryBackend) -> None:
    """A HEAD request gets the status and headers of the rejection, without a body."""
    app = DeviceSessionMiddleware(Inner(), backend=backend)
    status, headers, body = call(app, environ_for(method="HEAD"))
    assert status == 401
    assert headers["www-authenticate"] == "DeviceSession"
    assert body == b""


@pytest.mark.parametrize(
    "value",
    ["good,good", "good, good", "good\xe9", "g\u00f6od", "good\t", " good", "good\r\n", ""],
)
def test_strict_header_values(backend: MemoryBackend, value: str) -> None:
    """Joined repeats, non-ASCII latin-1 text and whitespace are all invalid_session."""
    app = DeviceSessionMiddleware(Inner(), backend=backend)
    status, _, body = call(app, environ_for(HTTP_X_DEVICE_SESSION_ID=value))
    assert (status, json.loads(body)) == (401, {"error": "invalid_session"})


def test_custom_header_name(backend: MemoryBackend) -> None:
    """The header setting picks the environ key (case and dashes as servers map them)."""
    assert environ_key("x-Session-Token") == "HTTP_X_SESSION_TOKEN"
    app = DeviceSessionMiddleware(Inner(), backend=backend, header="x-Session-Token")
    assert call(app, environ_for(HTTP_X_SESSION_TOKEN="good"))[0] == 200
    assert call(app, environ_for(HTTP_X_DEVICE_SESSION_ID="good"))[0] == 401


def test_exempt_prefix_and_method(backend: MemoryBackend) -> None:
    """exempt_paths are prefixes; OPTIONS is exempt by default; no record is attached."""
    inner = Inner()
    app = DeviceSessionMiddleware(inner, backend=backend, exempt_paths=["/public"])
    assert call(app, environ_for("/public/x"))[0] == 200
    assert call(app, environ_for("/private", method="OPTIONS"))[0] == 200
    assert call(app, environ_for("/private"))[0] == 401
    assert all(ENVIRON_KEY not in environ for environ in inner.environs)


def test_settings_object_and_overrides(backend: MemoryBackend) -> None:
    """A Settings (or mapping) plus keyword overrides; bad keys name themselves."""
    app = DeviceSessionMiddleware(Inner(), Settings(backend=backend), exempt_paths=["/p"])
    assert app.settings.exempt_paths == ("/p",)
    assert DeviceSessionMiddleware(Inner(), {"backend": backend}).settings.backend is backend
    with pytest.raises(ConfigError) as info:
        DeviceSessionMiddleware(Inner(), backend=backend, tll=5)  # type: ignore[call-arg]
    assert info.value.key == "tll"
    with pytest.raises(ConfigError) as info:
        DeviceSessionMiddleware(Inner(), backend=backend, ttl=-1)
    assert info.value.key == "ttl"


def test_misspelt_keyword_names_it_and_suggests(backend: MemoryBackend) -> None:
    """DeviceSessionMiddleware(app, tll=5): a ConfigError naming "tll", suggesting "ttl"."""
    with pytest.raises(ConfigError) as info:
        DeviceSessionMiddleware(Inner(), backend=backend, tll=5)  # type: ignore[call-arg]
    assert info.value.key == "tll"
    assert "did you mean 'ttl'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        DeviceSessionMiddleware(Inner(), {"backend": backend, "exempt_path": ["/x"]})
    assert info.value.key == "exempt_path"
    assert "did you mean 'exempt_paths'" in str(info.value)


def test_one_gate_for_alike_middlewares(backend: MemoryBackend) -> None:
    """Two middlewares configured alike share one gate (one cache)."""
    first = DeviceSessionMiddleware(Inner(), backend=backend)
    second = DeviceSessionMiddleware(Inner(), backend=backend)
    assert first.gate is second.gate


def test_bus_starts_on_first_request(backend: MemoryBackend) -> None:
    """The bus subscriber starts lazily, in the worker, on the first request."""
    app = DeviceSessionMiddleware(Inner(), backend=backend)
    assert not app.gate.started
    call(app, environ_for("/x", method="OPTIONS"))
    assert app.gate.started


# -- the hook ---------------------------------------------------------------------------


def hook_app(backend: MemoryBackend) -> DeviceSessionMiddleware:
    return DeviceSessionMiddleware(Inner(), backend=backend, invalidation_secret=SECRET)


def hook_environ(body: bytes, headers: dict[str, str], **extra: Any) -> WSGIEnvironment:
    environ = environ_for(HOOK, method="POST")
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    environ.update(
        {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": ""}
    )
    environ.update(extra)
    return environ


def test_hook_revokes(backend: MemoryBackend) -> None:
    """A signed revocation is applied: the cached session is refused at once."""
    app = hook_app(backend)
    assert call(app, environ_for(HTTP_X_DEVICE_SESSION_ID="good"))[0] == 200
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": "good"}])
    status, _, answer = call(app, hook_environ(body, headers))
    assert (status, json.loads(answer)) == (200, {"applied": 1})
    assert call(app, environ_for(HTTP_X_DEVICE_SESSION_ID="good"))[0] == 401
    assert call(app, environ_for(HTTP_X_DEVICE_SESSION_ID="other"))[0] == 200


def test_hook_needs_no_session_and_answers_405(backend: MemoryBackend) -> None:
    """The hook path skips the session check; other methods get 405 + Allow: POST."""
    app = hook_app(backend)
    status, headers, _ = call(app, environ_for(HOOK))
    assert status == 405
    assert headers["allow"] == "POST"


def test_no_secret_no_hook(backend: MemoryBackend) -> None:
    """Without invalidation_secret the path is an ordinary, checked path."""
    app = DeviceSessionMiddleware(Inner(), backend=backend)
    headers, body = signed_request(SECRET, [{"type": "flush"}])
    assert call(app, hook_environ(body, headers))[0] == 401


class CountingStream:
    """A request body that counts what is read from it."""

    def __init__(self, size: int, fail: bool = False) -> None:
        self.size = size
        self.read_bytes = 0
        self.fail = fail

    def read(self, n: int = -1) -> bytes:
        if self.fail:
            raise OSError("connection reset by peer")
        n = self.size - self.read_bytes if n < 0 else min(n, self.size - self.read_bytes)
        self.read_bytes += n
        return b"x" * n


def test_declared_oversize_refused_unread(backend: MemoryBackend) -> None:
    """Content-Length over 64 KiB: 413 before a single byte is read."""
    stream = CountingStream(MAX_BODY + 1)
    environ = hook_environ(b"", {}, **{"wsgi.input": stream, "CONTENT_LENGTH": str(MAX_BODY + 1)})
    status, _, _ = call(hook_app(backend), environ)
    assert status == 413
    assert stream.read_bytes == 0


def test_chunked_oversize_cut_at_limit(backend: MemoryBackend) -> None:
    """A chunked body (no Content-Length, input terminated) is read to 64 KiB + 1 at most."""
    stream = CountingStream(10 * MAX_BODY)
    environ = hook_environ(b"", {}, **{"wsgi.input": stream, "wsgi.input_terminated": True})
    del environ["CONTENT_LENGTH"]
    status, _, _ = call(hook_app(backend), environ)
    assert status == 413
    assert stream.read_bytes == MAX_BODY + 1


def test_chunked_within_limit_is_read(backend: MemoryBackend) -> None:
    """A signed chunked body within the limit is applied."""
    headers, body = signed_request(SECRET, [{"type": "flush"}])
    environ = hook_environ(body, headers, **{"wsgi.input_terminated": True})
    del environ["CONTENT_LENGTH"]
    status, _, answer = call(hook_app(backend), environ)
    assert (status, json.loads(answer)) == (200, {"applied": 1})


def test_unterminated_stream_without_length_is_not_read(backend: MemoryBackend) -> None:
    """No Content-Length and no input_terminated: PEP 3333 says do not read; 401."""
    stream = CountingStream(100)
    headers, _ = signed_request(SECRET, [{"type": "flush"}])
    environ = hook_environ(b"", headers, **{"wsgi.input": stream})
    del environ["CONTENT_LENGTH"]
    status, _, answer = call(hook_app(backend), environ)
    assert (status, json.loads(answer)) == (401, {"error": "invalid_signature"})
    assert stream.read_bytes == 0


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "+2", "\u0662", "2, 2", "0x2"])
def test_unreadable_content_length_refused(backend: MemoryBackend, length: str) -> None:
    """A Content-Length that is not a plain decimal is 400 invalid_payload, body unread
    (``int()`` would take several of these); digits past the limit are 413."""
    stream = CountingStream(2)
    environ = hook_environ(b"", {}, CONTENT_LENGTH=length, **{"wsgi.input": stream})
    status, _, answer = call(hook_app(backend), environ)
    assert (status, json.loads(answer)) == (400, {"error": "invalid_payload"})
    assert stream.read_bytes == 0
    environ = hook_environ(b"", {}, CONTENT_LENGTH="1" * 5000, **{"wsgi.input": stream})
    assert call(hook_app(backend), environ)[0] == 413
    assert stream.read_bytes == 0


def test_broken_stream_is_400_not_500(backend: MemoryBackend) -> None:
    """A client that goes away mid-body gets invalid_payload, never a 500."""
    environ = hook_environ(b"", {}, **{"wsgi.input": CountingStream(10, fail=True)})
    environ["CONTENT_LENGTH"] = "10"
    status, _, answer = call(hook_app(backend), environ)
    assert (status, json.loads(answer)) == (400, {"error": "invalid_payload"})


def test_read_body_short_stream() -> None:
    """A stream shorter than its declared length yields what was sent."""
    body = read_body(io.BytesIO(b"abc"), "10", terminated=False)
    assert body is not None
    assert (body.refused, body.body) == (False, b"abc")
    empty = read_body(io.BytesIO(b"abc"), "", terminated=False)
    assert empty is not None
    assert empty.body == b""


def _sessions_seen(mw: DeviceSessionMiddleware, session_id: str | None) -> object:
    """What ``sessionmw.wsgi.sessions(environ)`` answers inside the app."""
    from sessionmw.wsgi import sessions

    seen: list[object] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(sessions(environ))
        start_response("200 OK", [])
        return [b""]

    mw.app = app
    headers = [] if session_id is None else [("X-Device-Session-ID", session_id)]
    path = "/healthz" if session_id is None else "/whoami"
    run_wsgi_app(mw, EnvironBuilder(path=path, headers=headers).get_environ())
    return seen[0]


def _nothing(environ: Any, start_response: Any) -> Iterable[bytes]:
    return []


def test_sessions_from_environ_on_hits_misses_and_exempt_requests() -> None:
    """The hit path leaves the environ alone while the process has one gate (an
    environ insert can resize the dict: a measurable share of the hit's cost);
    sessions(environ) still finds the gate, and with several gates each
    middleware names its own."""
    one = DeviceSessionMiddleware(_nothing, backend=two_sessions(), exempt_paths=["/healthz"])
    assert _sessions_seen(one, None) is one.sessions  # exempt, no header
    assert _sessions_seen(one, "good") is one.sessions  # a miss: the full path
    assert one.gate.cache.stats()["misses"] == 1
    assert _sessions_seen(one, "good") is one.sessions  # a hit
    assert one.gate.cache.allowed_hits == 1
    other = DeviceSessionMiddleware(_nothing, backend=two_sessions(), ttl=30)
    assert other.gate is not one.gate
    assert _sessions_seen(other, "good") is other.sessions  # a miss
    assert _sessions_seen(other, "good") is other.sessions  # a hit, two gates now
    assert _sessions_seen(one, "good") is one.sessions
    assert (one.gate.cache.allowed_hits, other.gate.cache.allowed_hits) == (2, 1)
