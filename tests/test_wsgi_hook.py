"""The invalidation hook (SPEC section 8) as the WSGI middleware and the Flask blueprint
serve it: every :mod:`tests.hook_cases` check through ``webtest.TestApp``.

Method (405) and streaming (chunked 413) behaviour is driven in ``test_wsgi.py`` and
``test_flask.py``, where the raw environ can be built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from examples import flask_app, wsgi_app
from sessionmw import Settings
from tests import django_settings, hook_cases
from tests.hook_cases import HOOK_PATH, SIGNED_CASES, TOO_LARGE_BODY, HookCase, decode
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
        response = client.post(HOOK_PATH, body, headers=dict(headers), expect_errors=True)
        return response.status_int, decode(response.body)

    return post


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
