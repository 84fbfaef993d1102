"""``sessionmw.contrib.drf.DeviceSessionAuthentication`` (SPEC section 13) through DRF's
``APIClient`` on the Django example's ``GET /api/whoami`` (device session first, DRF
token second, ``IsAuthenticated``).

Two set-ups: ``/api/`` exempt from the middleware (the class checks the header with
the gate itself, so a token alone can pass) and the middleware in front (the class
reuses the session the middleware checked: no second lookup).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from tests import django_settings

django_settings.setup()

# Need the settings above.
from django.contrib.auth.models import User  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from sessionmw import SessionStatus, StoredSession  # noqa: E402
from sessionmw.backends.django import DjangoBackend  # noqa: E402
from sessionmw.contrib.django import sessions  # noqa: E402
from sessionmw.contrib.drf import DeviceSessionAuthentication  # noqa: E402
from tests.test_django_app import database, refused_alias  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("fresh_gates", "database")

URL = "/api/whoami"
INVALID = {"error": "invalid_session"}
EXEMPT = {"backend": "django", "exempt_paths": ["/api/"]}
GATED = {"backend": "django"}


def session(
    session_id: str, user_id: str = "alice", status: SessionStatus = SessionStatus.ACTIVE
) -> str:
    now = time.time()
    DjangoBackend().create(StoredSession(session_id, user_id, status, now + 3600, now - 60))
    return session_id


def call(session_id: str | None = None, *, token: str | None = None) -> Any:
    """GET /api/whoami through DRF's APIClient with these credentials."""
    headers = {}
    if session_id is not None:
        headers["X-Device-Session-ID"] = session_id
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    client: Any = APIClient()
    return client.get(URL, headers=headers)


def body(response: Any) -> Any:
    return json.loads(response.content)


@pytest.fixture(params=["exempt", "gated"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    User.objects.create_user("alice")
    with override_settings(SESSIONMW=EXEMPT if request.param == "exempt" else GATED):
        yield request.param


def test_valid_session_authenticates_its_user(mode: str) -> None:
    """request.user is the user named by the record's user_id; request.auth the record."""
    sid = session("s-alice")
    response = call(sid)
    assert response.status_code == 200
    assert body(response) == {"username": "alice", "via": "device_session", "session_id": sid}


def test_revoked_unknown_and_malformed_are_401_invalid_session(mode: str) -> None:
    """The SPEC section 7 body, ``WWW-Authenticate: DeviceSession``."""
    session("s-revoked", status=SessionStatus.REVOKED)
    for value in ("s-revoked", "s-unknown", "bad value", "a" * 257):
        response = call(value)
        assert (response.status_code, body(response)) == (401, INVALID), value
        assert response["WWW-Authenticate"] == "DeviceSession"


def test_revocation_through_sessions_is_seen_at_once(mode: str) -> None:
    sid = session("s-once")
    assert call(sid).status_code == 200
    assert sessions().revoke(sid) is True
    response = call(sid)
    assert (response.status_code, body(response)) == (401, INVALID)


def test_session_of_a_missing_or_inactive_user_is_refused(mode: str) -> None:
    session("s-ghost", "ghost")
    response = call("s-ghost")
    assert (response.status_code, body(response)) == (401, INVALID)
    User.objects.create_user("ghost", is_active=False)
    response = call("s-ghost")
    assert (response.status_code, body(response)) == (401, INVALID)


def test_missing_header_lets_the_token_class_try() -> None:
    """No session header: not authenticated by this class, so a DRF token on the same
    view works; neither: DRF's 401 with ``WWW-Authenticate: DeviceSession``."""
    user = User.objects.create_user("tok")
    token = Token.objects.create(user=user)
    with override_settings(SESSIONMW=EXEMPT):
        response = call(token=token.key)
        assert (response.status_code, body(response)) == (
            200,
            {"username": "tok", "via": "token", "session_id": None},
        )
        response = call()
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "DeviceSession"
        assert "detail" in body(response)
        # A bad device session is not rescued by a good token: the header was ours.
        response = call("s-nope", token=token.key)
        assert (response.status_code, body(response)) == (401, INVALID)
        response = call(token="wrong")
        assert response.status_code == 401


def test_store_down_is_503_with_retry_after() -> None:
    User.objects.create_user("alice")
    with override_settings(
        SESSIONMW={"backend": f"django://{refused_alias()}", "exempt_paths": ["/api/"]}
    ):
        response = call("s-any")
    assert (response.status_code, body(response)) == (503, {"error": "session_backend_unavailable"})
    assert response["Retry-After"] == "1"


def test_behind_the_middleware_the_record_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the middleware in front, the class checks nothing again."""
    User.objects.create_user("alice")
    sid = session("s-reused")
    with override_settings(SESSIONMW=GATED):
        gate = sessions().gate
        calls: list[str] = []
        real_check, real_hit = gate.check, gate.hit

        def counting_check(value: Any, **kwargs: Any) -> Any:
            calls.append("check")
            return real_check(value, **kwargs)

        def counting_hit(value: Any) -> Any:
            calls.append("hit")
            return real_hit(value)

        monkeypatch.setattr(gate, "check", counting_check)
        monkeypatch.setattr(gate, "hit", counting_hit)
        response = call(sid)
    assert response.status_code == 200
    assert calls == ["hit", "check"]  # the middleware's miss, then nothing from DRF


class ByPk(DeviceSessionAuthentication):
    user_lookup_field = "pk"


def test_lookup_field_by_subclass() -> None:
    """``user_lookup_field`` picks the user field; a user_id that field cannot hold is
    an invalid session, not a 500."""
    from django.test import RequestFactory
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework.request import Request

    user = User.objects.create_user("bob")
    factory: Any = RequestFactory()
    with override_settings(SESSIONMW=EXEMPT):
        for sid, user_id in (("s-pk", str(user.pk)), ("s-nan", "not-a-number")):
            session(sid, user_id)
        request = Request(factory.get(URL, headers={"X-Device-Session-ID": "s-pk"}))
        found = ByPk().authenticate(request)
        assert found is not None
        assert found[0] == user
        assert found[1].session_id == "s-pk"
        request = Request(factory.get(URL, headers={"X-Device-Session-ID": "s-nan"}))
        with pytest.raises(AuthenticationFailed) as info:
            ByPk().authenticate(request)
        assert info.value.detail == INVALID
