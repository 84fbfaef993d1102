"""The invalidation hook (SPEC section 8) through ``sessionmw.contrib.django.urls``:
every :mod:`tests.hook_cases` check with Django's sync ``Client`` (CSRF checks
enforced) and its ``AsyncClient`` (the ASGI handler)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from django.test import AsyncClient, Client, override_settings
from django.test.client import FakePayload

from sessionmw.gate import forget_gates
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

django_settings.setup()


class Mount:
    """post/status_of for one Django client flavour."""

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour

    def _run(self, call: Callable[[Any], Any]) -> Any:
        if self.flavour == "sync":
            return call(Client(enforce_csrf_checks=True))

        async def go() -> Any:
            return await call(AsyncClient(enforce_csrf_checks=True))

        return asyncio.run(go())

    def post(self, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        if self.flavour == "async" and any(k.lower() == "content-length" for k in headers):
            # AsyncClient adds its own Content-Length (Django would join the two).
            return self.raw("POST", headers, FakePayload(body))
        rest = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        content_type = headers.get("content-type", "application/octet-stream")
        response = self._run(
            lambda client: client.post(HOOK_PATH, body, content_type=content_type, headers=rest)
        )
        return response.status_code, decode(response.content)

    def raw(self, method: str, headers: Mapping[str, str], body: FakePayload) -> tuple[int, Any]:
        """A request with exactly these headers (values as the app sees them) and body
        stream: a raw environ (sync) or ASGI scope (async); no client arithmetic."""
        if self.flavour == "sync":
            environ = {
                key if key in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + key: value
                for key, value in (
                    (name.upper().replace("-", "_"), value) for name, value in headers.items()
                )
            }
            extra: dict[str, Any] = {**environ, "wsgi.input": body}
            response = Client().generic(method, HOOK_PATH, **extra)
        else:
            raw = [(b"host", b"testserver")]
            raw += [(k.lower().encode(), hook_cases.length_bytes(v)) for k, v in headers.items()]
            scope = {
                "method": method,
                "path": HOOK_PATH,
                "server": ("127.0.0.1", "80"),
                "scheme": "http",
                "headers": raw,
                "query_string": "",
                "_body_file": body,
            }

            async def go() -> Any:
                return await AsyncClient().request(**scope)

            response = asyncio.run(go())
        return response.status_code, decode(response.content)

    def status_of(self, session_id: str) -> int:
        response = self._run(lambda client: client.get("/whoami", headers={HEADER: session_id}))
        return int(response.status_code)


@pytest.fixture(params=["sync", "async"])
def mount(request: pytest.FixtureRequest) -> Iterator[Mount]:
    forget_gates()
    with override_settings(SESSIONMW=hook_cases.hook_settings()):
        yield Mount(request.param)
    forget_gates()


@pytest.mark.parametrize("case", SIGNED_CASES, ids=lambda c: c.name)
def test_signed_case(mount: Mount, case: HookCase) -> None:
    """Each signature/payload case gets the SPEC's status and body."""
    hook_cases.run_signed_case(mount.post, case)


@pytest.mark.parametrize("scenario", hook_cases.SCENARIOS, ids=lambda f: f.__name__)
def test_scenario(mount: Mount, scenario: Callable[[Any, Any], None]) -> None:
    """Push path, replay, all-or-nothing, user revocation, flush, forged signatures."""
    scenario(mount.post, mount.status_of)


def test_unsigned_too_large(mount: Mount) -> None:
    assert mount.post({}, TOO_LARGE_BODY)[0] == 413


@pytest.mark.parametrize("case", MALFORMED_LENGTHS, ids=lambda c: c.name)
def test_malformed_content_length(mount: Mount, case: LengthCase) -> None:
    """Any malformed Content-Length is 400 invalid_payload or 413, the body unread,
    before Django parses it (sync: WSGIRequest's int(); async: ASGIRequest)."""
    body = FakePayload(b"{}")
    status, answer = mount.raw("POST", {"content-length": case.value}, body)
    assert status == case.status, (case.name, status, answer)
    if case.body is not None:
        assert answer == case.body
    assert not body.read_started


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_methods_405_with_allow(mount: Mount, method: str) -> None:
    """Every method but POST on the hook URL: 405 + Allow: POST, never a 401."""
    if mount.flavour == "sync":
        response = Client().generic(method, HOOK_PATH)
    else:

        async def go() -> Any:
            return await AsyncClient().generic(method, HOOK_PATH)

        response = asyncio.run(go())
    assert (response.status_code, response["Allow"]) == (405, "POST"), method
    if method != "HEAD":
        assert decode(response.content) == {"error": "method_not_allowed"}
