"""The WSGI-world examples under their real servers, in subprocesses.

* The SPEC section 7 table against ``gunicorn examples.wsgi_app:app``,
  ``gunicorn examples.flask_app:app``, ``gunicorn examples.django_app.wsgi:application``
  (each ``--threads 4``) and ``uvicorn examples.django_app.asgi:application``, with
  raw requests (repeated headers really repeated, latin-1 bytes really sent).
* Coalescing under threads: ``gunicorn --threads 8``, 50 simultaneous requests for
  one uncached session against a slow auth service: one backend call.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sessionmw import SessionRecord, SessionStatus
from sessionmw.backends.sql import SQLBackend
from sessionmw.hook import MAX_BODY
from sessionmw.signing import new_secret, signed_request
from tests.servers import clean_env, free_port, gunicorn, running, uvicorn
from tests.spec_cases import (
    CASES,
    EXPIRED,
    RAW_CASES,
    REVOKED,
    VALID,
    VALID_NO_EXPIRY,
    Case,
    seeded_backend,
)
from tests.test_spec_table import Result, assert_matches

pytestmark = pytest.mark.slow

EXAMPLES = {
    "wsgi-gunicorn": ("examples.wsgi_app:app", "gunicorn"),
    "flask-gunicorn": ("examples.flask_app:app", "gunicorn"),
    "django-gunicorn": ("examples.django_app.wsgi:application", "gunicorn"),
    "django-uvicorn": ("examples.django_app.asgi:application", "uvicorn"),
}


SECRET = new_secret()
VICTIMS = {example: f"s-victim-{example}" for example in EXAMPLES}


def _argv(example: str, port: int, threads: int = 4) -> list[str]:
    app, server = EXAMPLES[example]
    if server == "gunicorn":
        return gunicorn(app, port, "--threads", str(threads), "--workers", "1")
    return uvicorn(app, port)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store seeded with the table's sessions, shared by every server."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'sessions.db'}"
    store = SQLBackend(url)
    store.create_schema()
    seeded = seeded_backend()
    for session_id in (VALID, VALID_NO_EXPIRY, REVOKED, EXPIRED):
        record = seeded.lookup(session_id)
        assert record is not None
        store.put(record)
    for victim in VICTIMS.values():
        store.put(SessionRecord(victim, "u-victim", SessionStatus.ACTIVE))
    store.close()
    return url


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/sessions/{{session_id}}"


@pytest.fixture(scope="module", params=list(EXAMPLES))
def servers(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[dict[Any, str]]:
    """Base URLs of one example: seeded store (False) and unreachable store (True)."""
    example = request.param
    up, down = free_port(), free_port()
    env = clean_env({"SESSIONMW_BACKEND": sqlite_url, "SESSIONMW_INVALIDATION_SECRET": SECRET})
    with (
        running(_argv(example, up), env, port=up) as ok,
        running(
            _argv(example, down),
            clean_env({"SESSIONMW_BACKEND": _closed_port_url(), "SESSIONMW_BACKEND_TIMEOUT": "1"}),
            port=down,
        ) as broken,
    ):
        yield {False: ok, True: broken, "example": example}


def _send(base: str, case: Case) -> Result:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in case.headers]
    response = httpx.request(case.method, base + case.path, headers=headers, timeout=10)
    return Result(
        response.status_code,
        response.content,
        {name.lower(): value for name, value in response.headers.items()},
    )


@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
def test_spec_table_under_real_server(servers: dict[Any, str], case: Case) -> None:
    """Each example under its server gives the table's status, body and headers."""
    assert_matches(case, _send(servers[case.down], case))


def test_hook_under_real_server(servers: dict[Any, str]) -> None:
    """A signed revocation through the example's hook (Django: CSRF on) applies at once."""
    base, victim = servers[False], VICTIMS[servers["example"]]
    whoami = base + "/whoami"
    assert httpx.get(whoami, headers={"X-Device-Session-ID": victim}).status_code == 200
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": victim}])
    response = httpx.post(base + "/_internal/session-invalidation", content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"applied": 1})
    assert httpx.get(whoami, headers={"X-Device-Session-ID": victim}).status_code == 401


def test_chunked_oversize_hook_body_under_real_server(servers: dict[Any, str]) -> None:
    """A chunked (no Content-Length) body over 64 KiB is refused with 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * (MAX_BODY // 8)

    response = httpx.post(servers[False] + "/_internal/session-invalidation", content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize("example", list(EXAMPLES))
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [("SESSIONMW_TLL", "5", "SESSIONMW_TLL"), ("SESSIONMW_TTL", "-1", "ttl")],
)
def test_misconfigured_server_fails_at_startup(
    example: str, variable: str, value: str, named: str
) -> None:
    """A typo or bad value in SESSIONMW_* stops the server at start-up, naming the key."""
    port = free_port()
    with (
        pytest.raises(RuntimeError, match="server exited") as info,
        running(_argv(example, port), clean_env({variable: value}), port=port, timeout=60),
    ):
        pass
    assert f"{named}:" in str(info.value)


# -- coalescing under threads ----------------------------------------------------------

CLIENTS = 50
SLOW_ID = "s-slow-coalesced"


class SlowAuthService:
    """An auth service that holds every lookup until released (or a deadline)."""

    def __init__(self, deadline: float = 10.0) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.deadline = deadline
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.calls += 1
                service.release.wait(service.deadline)
                body = b'{"user_id": "u-slow", "status": "active"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/sessions/{{session_id}}"

    def __enter__(self) -> SlowAuthService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _raw_get(port: int, path: str, session_id: str, sent: threading.Semaphore) -> bytes:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Device-Session-ID: {session_id}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        sent.release()
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("example", ["wsgi-gunicorn", "flask-gunicorn", "django-gunicorn"])
def test_one_backend_call_for_fifty_simultaneous_requests(example: str) -> None:
    """50 requests in flight for one uncached ID under gunicorn --threads 8: one lookup."""
    port = free_port()
    with SlowAuthService() as service:
        env = clean_env({"SESSIONMW_BACKEND": service.url, "SESSIONMW_BACKEND_TIMEOUT": "30"})
        with running(_argv(example, port, threads=8), env, port=port):
            sent = threading.Semaphore(0)
            answers: list[bytes] = []
            threads = [
                threading.Thread(
                    target=lambda: answers.append(_raw_get(port, "/whoami", SLOW_ID, sent))
                )
                for _ in range(CLIENTS)
            ]
            for thread in threads:
                thread.start()
            # Hold the backend until every request has been sent (bounded by a deadline).
            deadline = time.monotonic() + 10
            for _ in range(CLIENTS):
                assert sent.acquire(timeout=max(0.0, deadline - time.monotonic()))
            service.release.set()
            for thread in threads:
                thread.join(30)
    assert len(answers) == CLIENTS
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers[:1]
    assert all(SLOW_ID.encode() in answer for answer in answers)
    assert service.calls == 1
