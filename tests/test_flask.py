"""The Flask extension: config keys, init_app, g.device_session, @exempt, the hook blueprint."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask import Flask, g

from sessionmw import ConfigError, Settings
from sessionmw._body import MAX_BODY
from sessionmw.backends import MemoryBackend
from sessionmw.contrib.flask import SessionMW, SessionMWState, exempt
from sessionmw.signing import new_secret, signed_request
from sessionmw.wsgi import DeviceSessionMiddleware
from tests import django_settings
from tests.hook_cases import HOOK_PATH as HOOK
from tests.hook_cases import MALFORMED_LENGTHS, OTHER_METHODS, LengthCase
from tests.spec_cases import two_sessions

webtest = django_settings.import_webtest()

SECRET = new_secret()
HEADER = "X-Device-Session-ID"
pytestmark = pytest.mark.usefixtures("fresh_gates")


@pytest.fixture
def backend() -> MemoryBackend:
    return two_sessions()


def make_app(backend: MemoryBackend, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update({"SESSIONMW_BACKEND": backend, **config})
    ext = SessionMW()
    ext.init_app(app)

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user_id": g.device_session.user_id}

    @app.get("/open")
    @exempt
    def open_view() -> dict[str, Any]:
        return {"session": g.device_session}

    return app


def test_record_in_g(backend: MemoryBackend) -> None:
    """flask.g.device_session holds the record of a valid session."""
    client = webtest.TestApp(make_app(backend))
    assert client.get("/whoami", headers={HEADER: "good"}).json == {"user_id": "u1"}
    response = client.get("/whoami", status=401)
    assert response.json == {"error": "missing_session"}
    assert response.headers["WWW-Authenticate"] == "DeviceSession"


def test_exempt_view_skips_check(backend: MemoryBackend) -> None:
    """An @exempt view runs without a session, even with a bad header; g holds None."""
    client = webtest.TestApp(make_app(backend))
    assert client.get("/open").json == {"session": None}
    assert client.get("/open", headers={HEADER: "a b"}).json == {"session": None}


def test_unknown_url_is_checked(backend: MemoryBackend) -> None:
    """No route: still 401 without a session (routes are not revealed), 404 with one.

    Flask runs before_request also when routing failed (404, 405, a redirect), so
    the check sees every request; only exempt views, paths and methods skip it."""
    client = webtest.TestApp(make_app(backend))
    assert client.get("/nowhere", status=401).json == {"error": "missing_session"}
    assert client.get("/whoami/", status=401).json == {"error": "missing_session"}
    assert client.post("/whoami", status=401).json == {"error": "missing_session"}
    assert client.get("/nowhere", headers={HEADER: "x"}, status=401).json == {
        "error": "invalid_session"
    }
    client.get("/nowhere", headers={HEADER: "good"}, status=404)
    client.post("/whoami", headers={HEADER: "good"}, status=405)


def test_config_keys(backend: MemoryBackend) -> None:
    """Flat SESSIONMW_<KEY> config keys are read; the state is in app.extensions."""
    app = make_app(backend, SESSIONMW_EXEMPT_PATHS="/whoami,/x", SESSIONMW_TTL="30")
    state = app.extensions["sessionmw"]
    assert isinstance(state, SessionMWState)
    assert state.settings.exempt_paths == ("/whoami", "/x")
    assert state.settings.ttl == 30.0


def test_unknown_config_key_names_it(backend: MemoryBackend) -> None:
    """A misspelt SESSIONMW_ key fails at init_app, naming the key."""
    with pytest.raises(ConfigError) as info:
        make_app(backend, SESSIONMW_TLL=5)
    assert info.value.key == "SESSIONMW_TLL"
    assert "SESSIONMW_TLL" in str(info.value)
    assert "did you mean 'SESSIONMW_TTL'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_app(backend, SESSIONMW_EXEMPT_PATH=["/x"])
    assert "did you mean 'SESSIONMW_EXEMPT_PATHS'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_app(backend, SESSIONMW_COMPLETELY_WRONG=1)
    assert info.value.key == "SESSIONMW_COMPLETELY_WRONG"


def test_bad_config_value_names_key(backend: MemoryBackend) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(backend, SESSIONMW_TTL="-1")
    assert info.value.key == "ttl"


def test_precedence_settings_config_overrides(backend: MemoryBackend) -> None:
    """settings= is the base, app.config overrides it, keyword overrides win."""
    app = Flask(__name__)
    app.config.update(SESSIONMW_TTL=20, SESSIONMW_NEGATIVE_TTL=2)
    SessionMW(app, settings=Settings(backend=backend, ttl=10, max_entries=7), negative_ttl=1)
    settings = app.extensions["sessionmw"].settings
    assert (settings.ttl, settings.negative_ttl, settings.max_entries) == (20.0, 1.0, 7)


def test_shares_gate_with_wsgi_middleware(backend: MemoryBackend) -> None:
    """Flask and plain WSGI configured alike share one gate, hence one cache."""
    app = make_app(backend)
    wrapped = DeviceSessionMiddleware(app.wsgi_app, backend=backend)
    assert wrapped.gate is app.extensions["sessionmw"].gate


# -- the hook blueprint ---------------------------------------------------------------


def hook_client(backend: MemoryBackend) -> Any:
    return webtest.TestApp(make_app(backend, SESSIONMW_INVALIDATION_SECRET=SECRET))


def test_hook_revokes(backend: MemoryBackend) -> None:
    """The blueprint serves the signed hook; a revocation applies at once."""
    client = hook_client(backend)
    client.get("/whoami", headers={HEADER: "good"}, status=200)
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": "good"}])
    response = client.post(HOOK, body, headers=headers)
    assert response.json == {"applied": 1}
    client.get("/whoami", headers={HEADER: "good"}, status=401)
    client.get("/whoami", headers={HEADER: "other"}, status=200)


def test_hook_registered_as_blueprint(backend: MemoryBackend) -> None:
    app = make_app(backend, SESSIONMW_INVALIDATION_SECRET=SECRET)
    assert "sessionmw" in app.blueprints
    assert "sessionmw.invalidation_hook" in app.view_functions
    assert "sessionmw" not in make_app(backend).blueprints


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_hook_other_methods_405(backend: MemoryBackend, method: str) -> None:
    """Every method but POST, routed by the blueprint or not (TRACE, PROPFIND), is 405
    with Allow: POST: never the session check's 401."""
    app = make_app(backend, SESSIONMW_INVALIDATION_SECRET=SECRET)
    # Not webtest: its lint refuses methods it does not know.
    response = app.test_client().open(HOOK, method=method)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    if method != "HEAD":
        assert response.json == {"error": "method_not_allowed"}


def test_hook_moved_at_run_time_is_read_per_request(backend: MemoryBackend) -> None:
    """The hook path is read from the gate per request, not cached at init_app."""
    app = make_app(backend, SESSIONMW_INVALIDATION_SECRET=SECRET)
    gate = app.extensions["sessionmw"].gate
    gate.hook_path = "/moved"
    response = app.test_client().open("/moved", method="TRACE")
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")


@pytest.mark.parametrize("case", MALFORMED_LENGTHS, ids=lambda c: c.name)
def test_hook_malformed_content_length(backend: MemoryBackend, case: LengthCase) -> None:
    """A malformed Content-Length is 400 invalid_payload or 413, the body unread, before
    werkzeug parses it."""
    app = make_app(backend, SESSIONMW_INVALIDATION_SECRET=SECRET)
    stream = io.BytesIO(b"{}")
    environ = {"REQUEST_METHOD": "POST", "wsgi.input": stream, "CONTENT_LENGTH": case.value}
    response = webtest.TestRequest.blank(HOOK, environ).get_response(app)
    assert response.status_int == case.status
    if case.body is not None:
        assert response.json == case.body
    assert stream.tell() == 0


def test_hook_declared_oversize_413(backend: MemoryBackend) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    hook_client(backend).post(HOOK, body, status=413)


def test_hook_chunked_oversize_413(backend: MemoryBackend) -> None:
    """A chunked body over the limit is refused after 64 KiB + 1 bytes."""
    app = make_app(backend, SESSIONMW_INVALIDATION_SECRET=SECRET)
    stream = io.BytesIO(b"x" * (4 * MAX_BODY))
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": HOOK,
        "wsgi.input": stream,
        "wsgi.input_terminated": True,
    }
    response = webtest.TestRequest.blank(HOOK, environ).get_response(app)
    assert response.status_int == 413
    assert stream.tell() == MAX_BODY + 1
