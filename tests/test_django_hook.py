"""The invalidation hook (SPEC section 8) through ``sessionmw.contrib.django.urls``:
every :mod:`tests.hook_cases` check with Django's sync ``Client`` (CSRF checks
enforced) and its ``AsyncClient`` (the ASGI handler)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from django.test import AsyncClient, Client, override_settings

from sessionmw.gate import forget_gates
from tests import django_settings, hook_cases
from tests.hook_cases import HOOK_PATH, SIGNED_CASES, TOO_LARGE_BODY, HookCase, decode
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
        rest = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        content_type = headers.get("content-type", "application/octet-stream")
        response = self._run(
            lambda client: client.post(HOOK_PATH, body, content_type=content_type, headers=rest)
        )
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
