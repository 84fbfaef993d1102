"""The invalidation hook (SPEC section 8) as the WSGI middleware and the Flask blueprint
serve it: every :mod:`tests.hook_cases` check through ``webtest.TestApp``.

Method (405) and streaming (chunked 413) behaviour is driven in ``test_wsgi.py`` and
``test_flask.py``, where the raw environ can be built.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from examples import flask_app, wsgi_app
from sessionmw import Settings
from tests import django_settings, hook_cases
from tests.hook_cases import (
    HOOK_PATH,
    MALFORMED_LENGTHS,
    OTHER_METHODS,
    SIGNED_CASES,
    TOO_LARGE_BODY,
    HookCase,
    LengthCase,
    decode,
)
from tests.spec_cases import HEADER

webtest = django_settings.import_webtest()

BUILDERS: dict[str, Callable[[Settings], Any]] = {
    "wsgi": wsgi_app.create_app,
    "flask": flask_app.create_app,
}


pytestmark = pytest.mark.usefixtures("fresh_gates")


@pytest.fixture(params=list(BUILDERS))
def client(request: pytest.FixtureRequest) -> Any:
    settings = Settings(**hook_cases.hook_settings())
    return webtest.TestApp(BUILDERS[request.param](settings))


def _post(client: Any) -> hook_cases.Post:
    def post(headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        if any(name.lower() == "content-length" for name in headers):
            # webtest computes (and lints) Content-Length itself: send this one raw.
            return _raw_post(client.app, headers, body)
        response = client.post(HOOK_PATH, body, headers=dict(headers), expect_errors=True)
        return response.status_int, decode(response.body)

    return post


def hook_environ(headers: Mapping[str, str], body: bytes, **extra: Any) -> dict[str, Any]:
    """A POST to the hook as a WSGI server builds it; ``content-length`` taken as is."""
    environ: dict[str, Any] = EnvironBuilder(path=HOOK_PATH, method="POST").get_environ()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + key] = value
    environ.update(extra)
    return environ


def _raw_post(app: Any, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
    answer, status, _ = run_wsgi_app(app, hook_environ(headers, body))
    return int(status.split()[0]), decode(b"".join(answer))


def _status_of(client: Any) -> hook_cases.StatusOf:
    def status_of(session_id: str) -> int:
        response = client.get("/whoami", headers={HEADER: session_id}, expect_errors=True)
        return int(response.status_int)

    return status_of


@pytest.mark.parametrize("case", SIGNED_CASES, ids=lambda c: c.name)
def test_signed_case(client: Any, case: HookCase) -> None:
    """Each signature/payload case gets the SPEC's status and body."""
    hook_cases.run_signed_case(_post(client), case)


@pytest.mark.parametrize("scenario", hook_cases.SCENARIOS, ids=lambda f: f.__name__)
def test_scenario(client: Any, scenario: Callable[[Any, Any], None]) -> None:
    """Push path, replay, all-or-nothing, user revocation, flush, forged signatures."""
    scenario(_post(client), _status_of(client))


def test_unsigned_too_large(client: Any) -> None:
    """A body over 64 KiB is 413 whether or not it is signed."""
    assert _post(client)({}, TOO_LARGE_BODY)[0] == 413


def test_hook_needs_no_session(client: Any) -> None:
    """The hook answers for itself: no session header needed, never a 401 session error."""
    status, body = _post(client)({}, b"{}")
    assert (status, body) == (401, hook_cases.INVALID_SIGNATURE)


class CountingInput(io.BytesIO):
    """The server's input stream, recording how much the app read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.read_bytes += len(chunk)
        return chunk


@pytest.mark.parametrize("case", MALFORMED_LENGTHS, ids=lambda c: c.name)
def test_malformed_content_length(client: Any, case: LengthCase) -> None:
    """Any malformed Content-Length (non-ASCII digits too, as a str in the environ)
    is 400 invalid_payload or 413, the body unread: never a 500 or an exception."""
    stream = CountingInput(b"{}")
    environ = hook_environ({"content-length": case.value}, b"", **{"wsgi.input": stream})
    answer, status, _ = run_wsgi_app(client.app, environ)
    assert int(status.split()[0]) == case.status
    if case.body is not None:
        assert decode(b"".join(answer)) == case.body
    assert stream.read_bytes == 0


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_methods_405_with_allow(client: Any, method: str) -> None:
    """Every method but POST, registered or not (TRACE, PROPFIND), is 405 + Allow: POST,
    never the session check's 401 (and OPTIONS is not an exempt pass-through here)."""
    # Raw: webtest's lint refuses methods it does not know (PROPFIND).
    environ = EnvironBuilder(path=HOOK_PATH, method=method).get_environ()
    answer, status, headers = run_wsgi_app(client.app, environ)
    body = b"".join(answer)
    assert int(status.split()[0]) == 405, (method, status, body)
    assert headers["Allow"] == "POST"
    if method != "HEAD":
        assert decode(body) == {"error": "method_not_allowed"}
