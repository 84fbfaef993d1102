"""The Django integration: start-up validation, @exempt, CSRF and the hook, async mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path as url_path
from django.urls import resolve

from sessionmw import ConfigError, SessionRecord, SessionStatus
from sessionmw._body import MAX_BODY
from sessionmw.backends import MemoryBackend
from sessionmw.contrib.django import DeviceSessionMiddleware, SessionMWImproperlyConfigured
from sessionmw.gate import Gate
from sessionmw.signing import new_secret, signed_request
from tests import django_settings
from tests.hook_cases import HOOK_PATH as HOOK
from tests.spec_cases import two_sessions

django_settings.setup()

SECRET = new_secret()
pytestmark = pytest.mark.usefixtures("fresh_gates")


@pytest.fixture
def backend() -> MemoryBackend:
    return two_sessions()


@pytest.fixture
def configured(backend: MemoryBackend) -> Iterator[dict[str, Any]]:
    """settings.SESSIONMW with the hook on and /healthz NOT in exempt_paths."""
    conf = {"backend": backend, "invalidation_secret": SECRET}
    with override_settings(SESSIONMW=conf):
        yield conf


# -- start-up validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        ({"ttl": -1}, "ttl"),
        ({"tll": 5}, "tll"),
        ({"backend": "ftp://x"}, "backend"),
        ({"invalidation_secret": "nope"}, "invalidation_secret"),
        (["ttl", 5], "SESSIONMW"),
    ],
)
@pytest.mark.parametrize("handler", [WSGIHandler, ASGIHandler])
def test_misconfiguration_fails_at_startup(conf: Any, key: str, handler: type) -> None:
    """Building Django's handler raises ImproperlyConfigured naming the bad key."""
    with override_settings(SESSIONMW=conf), pytest.raises(ImproperlyConfigured) as info:
        handler()
    error = info.value
    assert isinstance(error, SessionMWImproperlyConfigured)
    assert isinstance(error, ConfigError)
    assert error.key == key
    assert str(error).startswith(f"{key}: ")
    assert "SESSIONMW" in str(error)


@pytest.mark.parametrize("handler", [WSGIHandler, ASGIHandler])
def test_misspelt_key_suggests_the_closest(handler: type) -> None:
    """settings.SESSIONMW = {"tll": 5}: ImproperlyConfigured naming "tll", suggesting "ttl"."""
    with (
        override_settings(SESSIONMW={"tll": 5}),
        pytest.raises(SessionMWImproperlyConfigured) as info,
    ):
        handler()
    assert info.value.key == "tll"
    assert "'ttl'" in str(info.value)
    assert "settings.SESSIONMW" in str(info.value)


def test_no_sessionmw_setting_means_defaults() -> None:
    """Without settings.SESSIONMW, every default applies (memory backend)."""
    with override_settings(SESSIONMW=None):
        middleware = DeviceSessionMiddleware(lambda request: None)  # type: ignore[arg-type, return-value]
    assert middleware.settings.backend == "memory://"


# -- the check -----------------------------------------------------------------------


def test_record_on_request(configured: dict[str, Any]) -> None:
    """request.device_session holds the record; the view sees it."""
    response = Client().get("/whoami", headers={"X-Device-Session-ID": "good"})
    assert response.status_code == 200
    assert response.json() == {"user_id": "u1", "session_id": "good"}


def test_exempt_view_skips_check(configured: dict[str, Any]) -> None:
    """An @exempt view answers without a session, even with a malformed header."""
    assert Client().get("/healthz").content == b"ok"
    assert Client().get("/healthz", headers={"X-Device-Session-ID": "a b"}).status_code == 200


async def test_exempt_view_skips_check_async(configured: dict[str, Any]) -> None:
    response = await AsyncClient().get("/healthz")
    assert response.content == b"ok"


def test_unknown_url_is_checked(configured: dict[str, Any]) -> None:
    """A URL with no view is checked like any other (SPEC section 7): 401 without a
    session, so an unauthenticated client cannot map which routes exist; Django's 404
    only with a valid session."""
    for path in ("/nowhere", "/whoami/", "/admin/"):
        response = Client().get(path)
        assert (response.status_code, response.json()) == (401, {"error": "missing_session"})
        assert response["WWW-Authenticate"] == "DeviceSession"
    response = Client().post("/nowhere", headers={"X-Device-Session-ID": "nope"})
    assert (response.status_code, response.json()) == (401, {"error": "invalid_session"})
    assert Client().get("/nowhere", headers={"X-Device-Session-ID": "good"}).status_code == 404


async def test_unknown_url_is_checked_async(configured: dict[str, Any]) -> None:
    response = await AsyncClient().get("/nowhere")
    assert (response.status_code, response.json()) == (401, {"error": "missing_session"})
    response = await AsyncClient().get("/nowhere", headers={"X-Device-Session-ID": "good"})
    assert response.status_code == 404


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_exempt_paths_and_methods_still_pass(backend: MemoryBackend, flavour: str) -> None:
    """exempt_paths (at segment boundaries) and exempt_methods pass unchecked, routed
    or not; a path that only starts with the prefix's letters is checked."""
    conf = {"backend": backend, "exempt_paths": ["/public"], "exempt_methods": ["OPTIONS"]}

    def status(method: str, path: str) -> int:
        if flavour == "sync":
            return int(Client().generic(method, path).status_code)

        async def go() -> Any:
            return await AsyncClient().generic(method, path)

        return int(asyncio.run(go()).status_code)

    with override_settings(SESSIONMW=conf):
        assert status("GET", "/public") == 404  # exempt, no such view: Django's 404
        assert status("GET", "/public/deep") == 404
        assert status("OPTIONS", "/whoami") == 405  # exempt method: the view's require_safe
        assert status("OPTIONS", "/nowhere") == 404
        assert status("GET", "/publicity") == 401
        assert status("GET", "/healthz") == 200  # the @exempt view


def test_resolves_only_on_a_miss(
    configured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cheap: a cached valid session passes without the middleware resolving the URL."""
    calls: list[str] = []

    def counting(path: str, urlconf: Any = None) -> Any:
        calls.append(path)
        return resolve(path, urlconf)

    monkeypatch.setattr("sessionmw.contrib.django.middleware.resolve", counting)
    client = Client()
    assert client.get("/whoami", headers={"X-Device-Session-ID": "good"}).status_code == 200
    assert calls == ["/whoami"]  # the miss: resolved once, to a non-exempt view
    assert client.get("/whoami", headers={"X-Device-Session-ID": "good"}).status_code == 200
    assert client.get("/healthz", headers={"X-Device-Session-ID": "good"}).content == b"ok"
    assert calls == ["/whoami"]


def _protected(request: Any) -> HttpResponse:
    return HttpResponse(f"protected {request.device_session.user_id}")


class AltUrls:
    """A URLconf where /healthz is NOT the @exempt view."""

    urlpatterns = [url_path("healthz", _protected)]


class SwapUrlconf:
    """A middleware after the gate that switches the request's URLconf."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        request.urlconf = AltUrls
        return self.get_response(request)


def test_view_swapped_by_later_middleware_is_checked(configured: dict[str, Any]) -> None:
    """If the view that finally runs is not the @exempt one the gate resolved (a later
    middleware changed request.urlconf), it is checked before it runs."""
    middleware = [
        "sessionmw.contrib.django.DeviceSessionMiddleware",
        f"{__name__}.SwapUrlconf",
    ]
    with override_settings(MIDDLEWARE=middleware):
        response = Client().get("/healthz")
        assert (response.status_code, response.json()) == (401, {"error": "missing_session"})
        response = Client().get("/healthz", headers={"X-Device-Session-ID": "good"})
        assert response.content == b"protected u1"


def test_missing_session_is_401_before_csrf(configured: dict[str, Any]) -> None:
    """A POST without a session is 401, not CSRF's 403 (the gate comes first)."""
    client = Client(enforce_csrf_checks=True)
    response = client.post("/whoami")
    assert response.status_code == 401
    # With a valid session, CSRF still guards the view.
    assert client.post("/whoami", headers={"X-Device-Session-ID": "good"}).status_code == 403


async def test_async_mode_uses_acheck(
    configured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI the middleware awaits acheck; the blocking check is never called."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync check called on the event loop")

    monkeypatch.setattr(Gate, "check", forbidden)
    response = await AsyncClient().get("/whoami", headers={"X-Device-Session-ID": "good"})
    assert response.json() == {"user_id": "u1", "session_id": "good"}
    response = await AsyncClient().get("/whoami")
    assert response.status_code == 401


class AsyncOnlyBackend:
    """A store whose blocking lookup must never run (it would block the loop)."""

    def __init__(self) -> None:
        self.loop_calls = 0

    def lookup(self, session_id: str) -> SessionRecord | None:
        raise AssertionError("blocking lookup under ASGI")

    async def alookup(self, session_id: str) -> SessionRecord | None:
        self.loop_calls += 1
        await asyncio.sleep(0)  # yields to the loop, no timing involved
        return SessionRecord(session_id, "u9", SessionStatus.ACTIVE)


async def test_async_miss_awaits_alookup() -> None:
    """A cache miss under ASGI awaits the backend's alookup on the loop."""
    backend = AsyncOnlyBackend()
    with override_settings(SESSIONMW={"backend": backend}):
        response = await AsyncClient().get("/whoami", headers={"X-Device-Session-ID": "fresh"})
    assert response.json() == {"user_id": "u9", "session_id": "fresh"}
    assert backend.loop_calls == 1


def test_middleware_modes() -> None:
    """Sync and async capable; async mode is picked from the next handler."""

    async def async_next(request: Any) -> Any:
        return None

    assert DeviceSessionMiddleware.sync_capable
    assert DeviceSessionMiddleware.async_capable
    with override_settings(SESSIONMW={}):
        sync = DeviceSessionMiddleware(lambda request: None)  # type: ignore[arg-type, return-value]
        asynchronous = DeviceSessionMiddleware(async_next)
    assert not sync.async_mode
    assert asynchronous.async_mode
    assert asyncio.iscoroutinefunction(asynchronous.process_view)
    assert not asyncio.iscoroutinefunction(sync.process_view)


# -- the hook -------------------------------------------------------------------------


def test_csrf_does_not_block_hook(configured: dict[str, Any]) -> None:
    """The hook view is CSRF-exempt and session-exempt: a signed POST is applied."""
    client = Client(enforce_csrf_checks=True)
    assert client.get("/whoami", headers={"X-Device-Session-ID": "good"}).status_code == 200
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": "good"}])
    response = client.post(HOOK, body, content_type="application/json", headers=headers)
    assert (response.status_code, response.json()) == (200, {"applied": 1})
    assert client.get("/whoami", headers={"X-Device-Session-ID": "good"}).status_code == 401
    assert client.get("/whoami", headers={"X-Device-Session-ID": "other"}).status_code == 200


async def test_hook_async(configured: dict[str, Any]) -> None:
    """The hook under Django's ASGI handler (body spooled by Django, limit still applied)."""
    client = AsyncClient()
    headers, body = signed_request(SECRET, [{"type": "user_sessions_revoked", "user_id": "u1"}])
    response = await client.post(HOOK, body, content_type="application/json", headers=headers)
    assert (response.status_code, response.json()) == (200, {"applied": 1})
    response = await client.get("/whoami", headers={"X-Device-Session-ID": "other"})
    assert response.status_code == 401
    response = await client.post(HOOK, b"x" * (MAX_BODY + 1), content_type="application/json")
    assert response.status_code == 413


def test_hook_405_and_413(configured: dict[str, Any]) -> None:
    client = Client()
    response = client.get(HOOK)
    assert (response.status_code, response["Allow"]) == (405, "POST")
    assert client.post(HOOK, b"x" * (MAX_BODY + 1), content_type="text/plain").status_code == 413


class CountingStream:
    def __init__(self, size: int) -> None:
        self.size = size
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.read_bytes if n < 0 else min(n, self.size - self.read_bytes)
        self.read_bytes += n
        return b"x" * n

    def readline(self, n: int = -1) -> bytes:
        raise AssertionError("not read line by line")


def test_hook_chunked_oversize_under_wsgi(configured: dict[str, Any]) -> None:
    """Under WSGI the hook reads the server's stream, so chunked bodies are limited too."""
    stream = CountingStream(10 * MAX_BODY)
    environ: dict[str, Any] = {
        "wsgi.input": stream,
        "wsgi.input_terminated": True,
        "CONTENT_LENGTH": "",
    }
    response = Client().generic("POST", HOOK, **environ)
    assert response.status_code == 413
    assert stream.read_bytes == MAX_BODY + 1


def test_hook_off_without_secret(backend: MemoryBackend) -> None:
    """Without invalidation_secret the hook route answers 404."""
    with override_settings(SESSIONMW={"backend": backend}):
        headers, body = signed_request(SECRET, [{"type": "flush"}])
        response = Client().post(HOOK, body, content_type="application/json", headers=headers)
    assert response.status_code == 404


def test_hook_answers_are_json(configured: dict[str, Any]) -> None:
    response = Client().post(HOOK, b"{}", content_type="application/json")
    assert response.status_code == 401
    assert json.loads(response.content) == {"error": "invalid_signature"}
