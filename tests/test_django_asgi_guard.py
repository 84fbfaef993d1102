"""Django under ASGI, driven with raw ASGI messages through Django's real ``ASGIHandler``.

Django's handler reads the whole body before any middleware or view runs, so the hook
view's 413 comes after the read; :func:`sessionmw.contrib.django.asgi.guard` refuses
an oversized or malformed hook request before Django reads a byte of it. The hook's
malformed ``Content-Length`` cases run here with and without the guard (never a 500).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

from sessionmw._body import MAX_BODY
from sessionmw.contrib.django.asgi import HookBodyGuard, guard, hook_path_info
from tests import django_settings, hook_cases
from tests.hook_cases import HOOK_PATH, MALFORMED_LENGTHS, OTHER_METHODS, LengthCase
from tests.spec_cases import HEADER, VALID, seeded_backend

django_settings.setup()

pytestmark = pytest.mark.usefixtures("fresh_gates")

CHUNK = 16 * 1024


class Driver:
    """One ASGI request: hands out body chunks, records what the app sent back.

    After the last chunk, ``receive`` waits for the response to finish before it
    reports ``http.disconnect`` (as a server does when the client stays connected).
    """

    def __init__(self, chunks: list[bytes], *, disconnect_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.disconnect_after = disconnect_after
        self.received_messages = 0
        self.received_bytes = 0
        self.sent: list[dict[str, Any]] = []
        self.done = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.disconnect_after is not None and self.received_messages >= self.disconnect_after:
            return {"type": "http.disconnect"}
        if self.chunks:
            chunk = self.chunks.pop(0)
            self.received_messages += 1
            self.received_bytes += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.done.set()

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return int(starts[0]["status"]) if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    @property
    def json(self) -> Any:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return json.loads(body) if body else None


def scope(
    method: str = "POST", path: str = HOOK_PATH, headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }


def run(app: Any, request_scope: dict[str, Any], driver: Driver) -> Driver:
    asyncio.run(app(request_scope, driver.receive, driver.send))
    return driver


@pytest.fixture
def hooked() -> Iterator[None]:
    with override_settings(SESSIONMW=hook_cases.hook_settings()):
        yield


@pytest.fixture(params=["guarded", "plain"])
def app(request: pytest.FixtureRequest, hooked: None) -> Any:
    handler = ASGIHandler()
    return guard(handler) if request.param == "guarded" else handler


@pytest.fixture
def guarded(hooked: None) -> HookBodyGuard:
    return guard(ASGIHandler())


def test_hook_path_found_by_reversing_the_route(hooked: None) -> None:
    assert hook_path_info() == HOOK_PATH
    with override_settings(SESSIONMW={"backend": "memory://"}):
        assert hook_path_info() is None  # no secret: no hook, nothing to guard
    assert hook_path_info() == HOOK_PATH


def test_streamed_oversize_is_refused_before_django_reads_it(guarded: HookBodyGuard) -> None:
    """A body streaming 1 MiB in 16 KiB chunks, no Content-Length: 413 after 64 KiB + 1
    chunk at most, not after the whole megabyte."""
    driver = run(guarded, scope(), Driver([b"x" * CHUNK] * 64))
    assert driver.status == 413
    assert driver.received_bytes <= MAX_BODY + CHUNK
    assert driver.received_messages == MAX_BODY // CHUNK + 1


def test_without_the_guard_django_reads_it_all(hooked: None) -> None:
    """Why the guard exists: Django's ASGIHandler spools the whole body first."""
    driver = run(ASGIHandler(), scope(), Driver([b"x" * CHUNK] * 64))
    assert driver.status == 413  # the view's limit still holds, but only after the read
    assert driver.received_messages == 64


def test_longer_than_declared_is_refused(guarded: HookBodyGuard) -> None:
    headers = [(b"content-length", b"10")]
    driver = run(guarded, scope(headers=headers), Driver([b"x" * CHUNK] * 16))
    assert driver.status == 413
    assert driver.received_messages == MAX_BODY // CHUNK + 1


def test_declared_oversize_is_refused_unread(guarded: HookBodyGuard) -> None:
    headers = [(b"content-length", str(10 * MAX_BODY).encode())]
    driver = run(guarded, scope(headers=headers), Driver([b"x" * CHUNK] * 40))
    assert driver.status == 413
    assert driver.received_messages == 0


def test_two_content_length_headers_are_400(app: Any) -> None:
    headers = [(b"content-length", b"2"), (b"content-length", b"2")]
    driver = run(app, scope(headers=headers), Driver([b"{}"]))
    assert (driver.status, driver.json) == (400, {"error": "invalid_payload"})


@pytest.mark.parametrize("case", MALFORMED_LENGTHS, ids=lambda c: c.name)
def test_malformed_content_length(app: Any, case: LengthCase) -> None:
    """Guarded: refused unread. Plain: Django reads, the view refuses; never a 500."""
    headers = [(b"content-length", hook_cases.length_bytes(case.value))]
    driver = run(app, scope(headers=headers), Driver([b"{}"]))
    assert driver.status == case.status
    if case.body is not None:
        assert driver.json == case.body
    if isinstance(app, HookBodyGuard):
        assert driver.received_messages == 0


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_methods_405(app: Any, method: str) -> None:
    driver = run(app, scope(method=method), Driver([b"x" * CHUNK] * 8))
    assert driver.status == 405
    assert driver.headers["allow"] == "POST"
    if isinstance(app, HookBodyGuard):
        assert driver.received_messages == 0


def test_body_within_limit_reaches_the_view_in_chunks(guarded: HookBodyGuard) -> None:
    """A signed revocation, streamed in small chunks, is applied through Django's view."""
    whoami = scope("GET", "/whoami", [(HEADER.lower().encode(), VALID.encode())])
    assert run(guarded, whoami, Driver([b""])).status == 200
    headers, body = hook_cases.revoke(VALID)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    driver = run(guarded, scope(headers=raw), Driver(pieces))
    assert (driver.status, driver.json) == (200, {"applied": 1})
    assert driver.received_messages == len(pieces)
    assert run(guarded, whoami, Driver([b""])).status == 401


def test_exactly_64_kib_is_read_and_checked(guarded: HookBodyGuard) -> None:
    driver = run(guarded, scope(), Driver([b"x" * CHUNK] * (MAX_BODY // CHUNK)))
    assert (driver.status, driver.json) == (401, {"error": "invalid_signature"})


def test_client_gone_mid_body_sends_nothing(guarded: HookBodyGuard) -> None:
    driver = run(guarded, scope(), Driver([b"x" * CHUNK] * 8, disconnect_after=2))
    assert driver.sent == []


def test_other_paths_pass_through_untouched(guarded: HookBodyGuard) -> None:
    """Not the hook: Django (and the session gate) decide, whatever the body size."""
    driver = run(guarded, scope("POST", "/whoami"), Driver([b"x" * CHUNK] * 8))
    assert (driver.status, driver.json) == (401, {"error": "missing_session"})
    assert driver.received_messages == 8  # Django's own read: not the guard's business
    driver = run(guarded, scope("GET", "/healthz"), Driver([b""]))
    assert driver.status == 200


def test_no_hook_no_guard() -> None:
    """Without a secret the hook URL is Django's (404 from the view), body and all."""
    with override_settings(SESSIONMW={"backend": seeded_backend()}):
        driver = run(guard(ASGIHandler()), scope(), Driver([b"x" * CHUNK] * 8))
    assert driver.status == 404
    assert driver.received_messages == 8


def test_example_asgi_application_is_guarded() -> None:
    """``examples/django_app/asgi.py`` wraps Django's handler in the guard (checked in a
    subprocess: importing it sets DJANGO_SETTINGS_MODULE for this process otherwise)."""
    root = Path(__file__).resolve().parent.parent
    code = (
        "import examples.django_app.asgi as m, sessionmw.contrib.django.asgi as g;"
        "assert isinstance(m.application, g.HookBodyGuard), m.application"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONMW_", "DJANGO_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
