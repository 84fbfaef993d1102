"""Running the example apps under their real servers (uvicorn, gunicorn) in tests,
with the stores and auth services they read, and raw clients to talk to them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from sessionmw import SessionRecord
from sessionmw.backends.sql import SQLBackend
from tests.conftest import free_port
from tests.spec_cases import EXPIRED, REVOKED, VALID, VALID_NO_EXPIRY, Case, Result, seeded_backend

if TYPE_CHECKING:
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def clean_env(extra: Mapping[str, str] = ()) -> dict[str, str]:  # type: ignore[assignment]
    """The test process's environment without SESSIONMW_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONMW_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@contextmanager
def running(
    argv: list[str],
    env: Mapping[str, str],
    *,
    port: int,
    ready_path: str = "/healthz",
    timeout: float = 30.0,
    output: Path | None = None,
) -> Iterator[str]:
    """Start a server process, wait until ``ready_path`` answers, yield its base URL.

    The server's output goes to ``output`` when given (for tests that read it), else
    to a temporary file shown if the server exits early."""
    base = f"http://127.0.0.1:{port}"
    # Output goes to a file, not a pipe: nobody reads a pipe while the server runs,
    # and a chatty server would block once the pipe buffer filled.
    log = output.open("w+b") if output else tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(argv, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                said = log.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {proc.returncode}:\n{said}")
            try:
                if httpx.get(base + ready_path, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer {ready_path} within {timeout}s")
            time.sleep(0.1)  # polling interval while the server boots, not a race wait
        yield base
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate a server process; kill it if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def access_logged(kind: str, app: str, port: int, log: Path, *extra: str) -> list[str]:
    """``argv`` of ``app`` under ``kind`` (``gunicorn`` or ``uvicorn``) writing an access
    log to ``log`` whose lines start with the worker's process ID (see :func:`served_by`)."""
    if kind == "gunicorn":
        return gunicorn(app, port, "--access-logfile", str(log),
                        "--access-logformat", "%(p)s %(s)s %(m)s %(U)s %(q)s", *extra)  # fmt: skip
    config = log.with_suffix(".logging.json")
    handler = {"class": "logging.FileHandler", "filename": str(log), "formatter": "pid"}
    access = {"handlers": ["file"], "level": "INFO", "propagate": False}
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"pid": {"format": "%(process)d %(message)s"}},
                "handlers": {"file": handler},
                "loggers": {"uvicorn.access": access},
            }
        )
    )
    return uvicorn(app, port, "--log-config", str(config), *extra)


_GUNICORN_ACCESS = re.compile(r"^<?(\d+)>? \d{3} \w+ \S+ n=(\d+)")
_UVICORN_ACCESS = re.compile(r'^(\d+) .*"\w+ \S+?\?n=(\d+) HTTP/[\d.]+" \d{3}')


def served_by(kind: str, log: Path) -> dict[int, int]:
    """Request number (the ``?n=`` query of each request) -> PID of the worker that
    answered it, from an access log written as :func:`access_logged` sets up."""
    pattern = _GUNICORN_ACCESS if kind == "gunicorn" else _UVICORN_ACCESS
    found: dict[int, int] = {}
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if match := pattern.match(line):
                found[int(match.group(2))] = int(match.group(1))
    return found


def uvicorn(app: str, port: int, *extra: str) -> list[str]:
    return [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), *extra]


def gunicorn(app: str, port: int, *extra: str) -> list[str]:
    return [str(BIN / "gunicorn"), app, "--bind", f"127.0.0.1:{port}", *extra]


def seed_store(url: str, *extra: SessionRecord) -> None:
    """Create the SQL store at ``url`` with the table's sessions, plus ``extra``."""
    store = SQLBackend(url)
    store.create_schema()
    seeded = seeded_backend()
    for session_id in (VALID, VALID_NO_EXPIRY, REVOKED, EXPIRED):
        record = seeded.lookup(session_id)
        assert record is not None
        store.put(record)
    for record in extra:
        store.put(record)
    store.close()


def closed_port_url() -> str:
    """An HTTP backend URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/sessions/{{session_id}}"


def _raw_headers(case: Case) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in case.headers]


def _result(response: httpx.Response) -> Result:
    return Result(
        response.status_code,
        response.content,
        {name.lower(): value for name, value in response.headers.items()},
    )


def send_case(base: str, case: Case) -> Result:
    """Send a table case to a running server, header bytes as they are."""
    response = httpx.request(case.method, base + case.path, headers=_raw_headers(case), timeout=10)
    return _result(response)


async def send_case_asgi(app: Any, case: Case) -> Result:
    """Send a table case to an ASGI app in-process (``httpx.ASGITransport``), header
    bytes as they are."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.request(case.method, case.path, headers=_raw_headers(case))
    return _result(response)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler for a stand-in service: JSON answers, no request log."""

    def send_json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalServer:
    """``handler`` served on a free loopback port by a thread of this process, from
    ``with`` to its end (a thread per request)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class SlowAuthService(LocalServer):
    """An auth service that holds every lookup until released (or a deadline)."""

    def __init__(self, deadline: float = 10.0) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.deadline = deadline
        service = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                service.calls += 1
                service.release.wait(service.deadline)
                self.send_json(200, b'{"user_id": "u-slow", "status": "active"}')

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return self.base_url + "/sessions/{session_id}"

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        super().__exit__(*exc)


def raw_get(port: int, path: str, session_id: str, sent: threading.Semaphore) -> bytes:
    """A raw HTTP/1.1 GET with a session; releases ``sent`` once the request is out."""
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


def simultaneous_gets(
    argv: list[str], port: int, service: SlowAuthService, session_id: str, clients: int
) -> list[bytes]:
    """Run the server ``argv`` on ``service``; send ``clients`` GET /whoami for
    ``session_id`` at once and hold the backend until every request has been sent
    (bounded by a deadline). The raw answers."""
    env = clean_env({"SESSIONMW_BACKEND": service.url, "SESSIONMW_BACKEND_TIMEOUT": "30"})
    answers: list[bytes] = []
    with running(argv, env, port=port):
        sent = threading.Semaphore(0)
        threads = [
            threading.Thread(
                target=lambda: answers.append(raw_get(port, "/whoami", session_id, sent))
            )
            for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        for _ in range(clients):
            assert sent.acquire(timeout=max(0.0, deadline - time.monotonic()))
        service.release.set()
        for thread in threads:
            thread.join(30)
    return answers


__all__ = [
    "ROOT",
    "access_logged",
    "clean_env",
    "free_port",
    "gunicorn",
    "running",
    "served_by",
    "stop",
    "uvicorn",
]
