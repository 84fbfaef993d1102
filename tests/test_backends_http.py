"""HTTPBackend against a real HTTP server on loopback (a thread in this process)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from structlog.testing import capture_logs

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus
from sessionmw._log import BACKEND_MALFORMED, hash_id
from sessionmw.backends import backend_from_url
from sessionmw.backends.http import HTTPBackend

SID = "sid+Raw/ID==x"
NOW = time.time()
PREFIX = "/sessions/"


@dataclass
class AuthService:
    """What the test server answers, and what it saw."""

    url: str
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def answer(self, session_id: str, status: int, body: Any = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[session_id] = (status, raw)


def _handler(service: AuthService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            service.paths.append(self.path)
            service.headers.append({k.lower(): v for k, v in self.headers.items()})
            session_id = unquote(self.path[len(PREFIX) :])
            if session_id in service.slow:
                service.held.set()
                service.release.wait(10)
            status, body = service.answers.get(session_id, (404, b'{"error": "not found"}'))
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout tests)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def service() -> Iterator[AuthService]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(AuthService(url="")))
    port = server.server_address[1]
    svc = AuthService(url=f"http://127.0.0.1:{port}{PREFIX}{{session_id}}")
    server.RequestHandlerClass = _handler(svc)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield svc
    svc.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def _make(url: str, timeout: float = 2.0, client: Any = None) -> HTTPBackend:
    backend = backend_from_url(url, timeout=timeout, client=client)
    assert isinstance(backend, HTTPBackend)
    return backend


@pytest.fixture
async def backend(service: AuthService) -> AsyncIterator[HTTPBackend]:
    backend = _make(service.url)
    yield backend
    await backend.aclose()


def _no_raw_id(logs: Sequence[Mapping[str, Any]], session_id: str = SID) -> None:
    assert session_id not in repr(logs)


# -- answers ---------------------------------------------------------------------


async def test_found_sync_and_async(service: AuthService, backend: HTTPBackend) -> None:
    body = {
        "session_id": SID,
        "user_id": "user-1",
        "status": "active",
        "expires_at": NOW + 60,
        "issued_at": NOW - 60,
        "data": {"role": "admin"},
    }
    service.answer(SID, 200, body)
    expected = SessionRecord(
        SID, "user-1", SessionStatus.ACTIVE, NOW + 60, NOW - 60, {"role": "admin"}
    )
    assert backend.lookup(SID) == expected
    assert await backend.alookup(SID) == expected


async def test_minimal_body_without_session_id(service: AuthService, backend: HTTPBackend) -> None:
    service.answer("s", 200, {"user_id": "u", "status": "revoked"})
    assert await backend.alookup("s") == SessionRecord("s", "u", SessionStatus.REVOKED)


async def test_404_is_unknown(backend: HTTPBackend) -> None:
    with capture_logs() as logs:
        assert backend.lookup("nope") is None
        assert await backend.alookup("nope") is None
    assert logs == []


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403, 302, 204, 201, 400])
async def test_other_statuses_are_unavailable(
    service: AuthService, backend: HTTPBackend, status: int
) -> None:
    service.answer(SID, status, {"user_id": "u", "status": "active"})
    with pytest.raises(BackendUnavailable, match=str(status)) as info:
        backend.lookup(SID)
    assert SID not in str(info.value)
    with pytest.raises(BackendUnavailable, match=str(status)):
        await backend.alookup(SID)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "JSON"),
        (b"", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b"[1, 2]", "object"),
        (b'"text"', "object"),
        (b"null", "object"),
        (b"[" * 100_000, "JSON"),
        (json.dumps({"session_id": "other", "user_id": "u", "status": "active"}), "match"),
        (json.dumps({"session_id": 5, "user_id": "u", "status": "active"}), "match"),
        (json.dumps({"user_id": "u", "status": "disabled"}), "status"),
        (json.dumps({"user_id": 42, "status": "active"}), "user_id"),
        (json.dumps({"user_id": "u", "status": "active", "data": [1]}), "data"),
        (json.dumps({"user_id": "u", "status": "active", "expires_at": "x"}), "expires_at"),
        (json.dumps({"user_id": "u", "status": "active", "expires_at": True}), "expires_at"),
        (json.dumps({"user_id": "u", "status": "active", "expires_at": 1767225600000}), "millis"),
        (json.dumps({"user_id": "u", "status": "active", "issued_at": 4e12}), "milliseconds"),
    ],
)
async def test_malformed_bodies_are_unknown_and_logged(
    service: AuthService, backend: HTTPBackend, body: bytes | str, problem: str
) -> None:
    service.answer(SID, 200, body.encode() if isinstance(body, str) else body)
    with capture_logs() as logs:
        assert backend.lookup(SID) is None
        assert await backend.alookup(SID) is None
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED] * 2
    assert all(entry["session"] == hash_id(SID) for entry in logs)
    assert problem in logs[0]["problem"]
    _no_raw_id(logs)


@pytest.mark.parametrize(
    ("session_id", "path"),
    [
        ("a/b+c=d", "a%2Fb%2Bc%3Dd"),
        ("../../admin", "..%2F..%2Fadmin"),
        ("x?y=1#z", "x%3Fy%3D1%23z"),
        ("sp ace~_.-", "sp%20ace~_.-"),
    ],
)
async def test_ids_are_url_quoted(
    service: AuthService, backend: HTTPBackend, session_id: str, path: str
) -> None:
    service.answer(session_id, 200, {"session_id": session_id, "user_id": "u", "status": "active"})
    assert backend.lookup(session_id) is not None
    assert await backend.alookup(session_id) is not None
    assert service.paths == [PREFIX + path] * 2


# -- failures and timeouts -------------------------------------------------------


def test_sync_timeout_is_honoured(service: AuthService) -> None:
    service.slow.add(SID)
    service.answer(SID, 200, {"user_id": "u", "status": "active"})
    backend = _make(service.url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        backend.lookup(SID)
    assert 0.25 < time.monotonic() - started < 1.0
    assert SID not in str(info.value)
    backend.close()


async def test_async_timeout_is_honoured_without_blocking_the_loop(service: AuthService) -> None:
    service.slow.add(SID)
    service.answer(SID, 200, {"user_id": "u", "status": "active"})
    backend = _make(service.url, timeout=0.3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        await backend.alookup(SID)
    elapsed = time.monotonic() - started
    task.cancel()
    assert 0.25 < elapsed < 1.0
    assert ticks >= 10
    assert SID not in str(info.value)
    await backend.aclose()


async def test_slow_answer_within_the_timeout_is_served(service: AuthService) -> None:
    service.slow.add("s")
    service.answer("s", 200, {"user_id": "u", "status": "active"})
    backend = _make(service.url, timeout=5.0)
    lookup = asyncio.create_task(backend.alookup("s"))
    # Wait until the request reached the server and is held there.
    assert await asyncio.to_thread(service.held.wait, 5)
    assert not lookup.done()
    service.release.set()
    assert await lookup == SessionRecord("s", "u", SessionStatus.ACTIVE)
    await backend.aclose()


# -- clients ---------------------------------------------------------------------


async def test_given_sync_client_serves_both_paths(service: AuthService) -> None:
    service.answer("s", 200, {"user_id": "u", "status": "active"})
    with httpx.Client(headers={"Authorization": "Bearer sync"}) as client:
        backend = _make(service.url, client=client)
        assert backend.lookup("s") is not None
        assert await backend.alookup("s") is not None
        await backend.aclose()
        assert not client.is_closed
    assert [h["authorization"] for h in service.headers] == ["Bearer sync"] * 2


async def test_given_async_client_serves_the_async_path(service: AuthService) -> None:
    service.answer("s", 200, {"user_id": "u", "status": "active"})
    async with httpx.AsyncClient(headers={"Authorization": "Bearer async"}) as client:
        backend = _make(service.url, client=client)
        assert await backend.alookup("s") is not None
        assert backend.lookup("s") is not None
        await backend.aclose()
        assert not client.is_closed
    assert [h.get("authorization") for h in service.headers] == ["Bearer async", None]


def test_each_event_loop_gets_its_own_async_client(service: AuthService) -> None:
    service.answer("s", 200, {"user_id": "u", "status": "active"})
    backend = _make(service.url)
    clients: list[httpx.AsyncClient] = []

    async def once() -> SessionRecord | None:
        record = await backend.alookup("s")
        clients.append(backend._async_client())
        await backend.aclose()
        return record

    assert asyncio.run(once()) is not None
    assert asyncio.run(once()) is not None
    assert clients[0] is not clients[1]
    assert all(client.is_closed for client in clients)


def test_url_for_quotes_into_the_template() -> None:
    backend = HTTPBackend("https://auth.example/v1/{session_id}/state", timeout=1, client=None)
    assert backend.url_for("a/b") == "https://auth.example/v1/a%2Fb/state"
    assert "a/b" not in repr(backend)


# -- dot segments and foreign answers --------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "segment"), [(".", "%2E"), ("..", "%2E%2E"), ("...", "%2E%2E%2E")]
)
async def test_dot_ids_stay_one_path_segment(
    service: AuthService, backend: HTTPBackend, session_id: str, segment: str
) -> None:
    """An ID of dots only is percent-encoded, so the server sees one literal segment
    under the template's path, never the template's parent or the root."""
    body = {"session_id": session_id, "user_id": "u", "status": "active"}
    service.answer(session_id, 200, body)
    assert backend.lookup(session_id) == SessionRecord(session_id, "u", SessionStatus.ACTIVE)
    assert await backend.alookup(session_id) == SessionRecord(session_id, "u", SessionStatus.ACTIVE)
    assert service.paths == [PREFIX + segment] * 2


@pytest.mark.parametrize("session_id", [".", ".."])
async def test_dot_ids_in_the_middle_of_a_template(service: AuthService, session_id: str) -> None:
    """``/sessions/{session_id}/state`` with ``..`` is not ``/state``: the dots stay
    in their own segment between the template's two parts."""
    backend = _make(service.url + "/state")
    assert backend.lookup(session_id) is None
    assert await backend.alookup(session_id) is None
    await backend.aclose()
    encoded = "%2E" * len(session_id)
    assert service.paths == [f"{PREFIX}{encoded}/state"] * 2


async def test_answer_about_another_session_is_unknown(
    service: AuthService, backend: HTTPBackend
) -> None:
    """A 200 whose ``session_id`` is not the one asked for (a proxy or a routing bug
    answering for another resource) is read as unknown and logged, sync and async."""
    service.answer("..", 200, {"session_id": "other", "user_id": "u", "status": "active"})
    with capture_logs() as logs:
        assert backend.lookup("..") is None
        assert await backend.alookup("..") is None
    assert [entry["problem"] for entry in logs] == ["session_id in the body does not match"] * 2
    assert all(entry["session"] == hash_id("..") for entry in logs)
