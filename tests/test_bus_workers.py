"""The Redis bus across real worker processes: gunicorn (Flask example) and uvicorn
(Starlette example), with a SQLite store the backend reads.

Which worker answered a request is read from the server's own access log (the
process ID is part of the line and each request carries a unique ``?n=`` query), so
the examples expose nothing extra. Races are waited out by polling with deadlines.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sessionmw import SessionRecord, SessionStatus
from sessionmw.backends.sql import SQLBackend
from sessionmw.signing import new_secret, signed_request
from tests.conftest import free_port
from tests.servers import ROOT, clean_env, gunicorn, uvicorn
from tests.test_bus_redis import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SECRET = new_secret()
HEADER = "X-Device-Session-ID"
HOOK = "/_internal/session-invalidation"
DEADLINE = 15.0

_GUNICORN_LINE = re.compile(r"^<?(\d+)>? (\d{3}) (\w+) (\S+) n=(\d+)")
_UVICORN_LINE = re.compile(r'^(\d+) .*"(\w+) (\S+?)\?n=(\d+) HTTP/[\d.]+" (\d{3})')


@dataclass
class App:
    """A running multi-worker server and what its access log says."""

    base: str
    log: Path
    output: Path
    workers: int
    kind: str
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    sent: dict[int, str] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, session_id: str) -> tuple[int, int]:
        """GET /whoami with a session; (request number, status)."""
        with self.lock:
            n = next(self.counter)
            self.sent[n] = session_id
        response = httpx.get(
            f"{self.base}/whoami?n={n}",
            headers={HEADER: session_id, "connection": "close"},
            timeout=10,
        )
        self.statuses.append(response.status_code)
        return n, response.status_code

    def burst(self, session_id: str, count: int = 24) -> list[tuple[int, int]]:
        """Concurrent requests, so every worker gets some."""
        return [r for _, r in self.mixed({session_id: 0}, count)]

    def mixed(self, sessions: Mapping[str, int], count: int) -> list[tuple[str, tuple[int, int]]]:
        """``count`` concurrent requests per session: (session, (number, status))."""
        todo = [sid for sid in sessions for _ in range(count)]
        with ThreadPoolExecutor(8) as pool:
            return list(zip(todo, pool.map(self.get, todo), strict=True))

    def served(self) -> dict[int, int]:
        """Request number -> worker PID, from the access log."""
        result: dict[int, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if self.kind == "gunicorn":
                match = _GUNICORN_LINE.match(line)
                if match:
                    result[int(match.group(5))] = int(match.group(1))
            else:
                match = _UVICORN_LINE.match(line)
                if match:
                    result[int(match.group(4))] = int(match.group(1))
        return result

    def pids_of(self, requests: list[tuple[int, int]]) -> dict[int, set[int]]:
        """Worker PID -> statuses it answered, for these requests (waits for the log)."""
        deadline = time.monotonic() + 10
        numbers = {n for n, _ in requests}
        while True:
            served = self.served()
            if numbers <= served.keys():
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{len(numbers - served.keys())} requests missing from the access log")
            threading.Event().wait(0.02)  # polling the log file
        by_pid: dict[int, set[int]] = {}
        for n, status in requests:
            by_pid.setdefault(served[n], set()).add(status)
        return by_pid

    def until_every_worker(self, session_id: str, status: int) -> None:
        self.expect({session_id: status})

    def expect(self, wanted: Mapping[str, int]) -> None:
        """Send requests until every worker has answered each session as ``wanted``;
        then bursts in which every worker answers and nothing else is seen."""
        deadline = time.monotonic() + DEADLINE
        seen: dict[str, set[int]] = {sid: set() for sid in wanted}
        while any(len(pids) < self.workers for pids in seen.values()):
            if time.monotonic() > deadline:
                pytest.fail(f"within {DEADLINE}s, workers answering as {wanted}: {seen}")
            results = self.mixed({sid: 0 for sid, pids in seen.items()
                                  if len(pids) < self.workers}, 12)  # fmt: skip
            served = self._pids([r for _, r in results])
            for sid, (n, status) in results:
                if status == wanted[sid]:
                    seen[sid].add(served[n])
        # From now on, whichever worker serves it, the answer is the same.
        covered: dict[str, dict[int, set[int]]] = {sid: {} for sid in wanted}
        deadline = time.monotonic() + DEADLINE
        while any(len(pids) < self.workers for pids in covered.values()):
            if time.monotonic() > deadline:
                pytest.fail(f"bursts did not reach all {self.workers} workers: {covered}")
            results = self.mixed({sid: 0 for sid in wanted}, 12)
            served = self._pids([r for _, r in results])
            for sid, (n, status) in results:
                covered[sid].setdefault(served[n], set()).add(status)
        for sid, by_pid in covered.items():
            assert all(statuses == {wanted[sid]} for statuses in by_pid.values()), (sid, by_pid)

    def _pids(self, requests: list[tuple[int, int]]) -> dict[int, int]:
        self.pids_of(requests)  # waits for the log lines
        return self.served()

    def hook(self, events: list[dict[str, Any]], msg_id: str | None = None) -> tuple[int, Any, int]:
        """A signed hook call; (status, JSON body, worker PID that served it)."""
        headers, body = signed_request(SECRET, events, msg_id=msg_id)
        with self.lock:
            n = next(self.counter)
        response = httpx.post(
            f"{self.base}{HOOK}?n={n}", content=body, headers={**headers, "connection": "close"}
        )
        served = self.pids_of([(n, response.status_code)])
        return response.status_code, response.json(), next(iter(served))

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@contextmanager
def serving(argv: list[str], env: Mapping[str, str], port: int, output: Path) -> Iterator[str]:
    """Like tests.servers.running, with the server's output in a file (a pipe nobody
    drains would block a chatty server; the file is also read by the tests)."""
    base = f"http://127.0.0.1:{port}"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=dict(env), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {proc.returncode}:\n{output.read_text()}"
                    )
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start:\n{output.read_text()}")
                threading.Event().wait(0.1)  # polling while the server boots
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("server did not stop within 15 s (deadlock?)") from None


def _store(path: Path) -> tuple[str, SQLBackend]:
    url = f"sqlite:///{path}"
    backend = SQLBackend(url)
    backend.create_schema()
    now = time.time()
    for sid, user in (("s1", "u1"), ("s2", "u2"), ("s3", "u3"), ("s4", "u3"), ("s5", "u5"),
                      ("s6", "u6")):  # fmt: skip
        backend.put(SessionRecord(sid, user, SessionStatus.ACTIVE, now + 3600, now - 60))
    return url, backend


def _examples(name: str) -> None:
    if not (ROOT / "examples" / f"{name}.py").exists():
        pytest.skip(f"examples/{name}.py has not landed yet")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")


Launch = Callable[..., Any]


@pytest.fixture
def launch(tmp_path: Path, redis_url: str) -> Iterator[Launch]:
    """Start an example under gunicorn or uvicorn with the Redis bus; yields App."""
    stack: list[Any] = []

    def start(
        kind: str,
        workers: int,
        *extra: str,
        bus: str = redis_url,
        env: Mapping[str, str] = (),  # type: ignore[assignment]
    ) -> tuple[App, SQLBackend, str]:
        store_url, backend = _store(tmp_path / f"sessions-{len(stack)}.db")
        stream = f"sessionmw:test:{uuid.uuid4().hex}"
        port = free_port()
        log = tmp_path / f"access-{len(stack)}.log"
        output = tmp_path / f"output-{len(stack)}.log"
        log.touch()
        settings = {
            "SESSIONMW_BACKEND": store_url,
            "SESSIONMW_BUS": bus,
            "SESSIONMW_STREAM": stream,
            "SESSIONMW_INVALIDATION_SECRET": SECRET,
            **dict(env),
        }
        if kind == "gunicorn":
            _examples("flask_app")
            argv = gunicorn("examples.flask_app:app", port, "-w", str(workers),
                            "--access-logfile", str(log),
                            "--access-logformat", "%(p)s %(s)s %(m)s %(U)s %(q)s",
                            "--graceful-timeout", "5", *extra)  # fmt: skip
        else:
            _examples("starlette_app")
            config = tmp_path / f"log-{len(stack)}.json"
            config.write_text(json.dumps(_uvicorn_logging(log)))
            argv = uvicorn("examples.starlette_app:app", port, "--workers", str(workers),
                           "--log-config", str(config), *extra)  # fmt: skip
        context = serving(argv, clean_env(settings), port, output)
        base = context.__enter__()
        stack.append(context)
        app = App(base, log, output, workers, kind)
        stack.append(app)
        return app, backend, stream

    yield start
    for item in reversed(stack):
        if not isinstance(item, App):
            item.__exit__(None, None, None)


def _uvicorn_logging(path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"pid": {"format": "%(process)d %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "pid"}
        },
        "loggers": {"uvicorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }


def _subscribers(client: redis.Redis) -> set[int]:
    """PIDs with a live subscriber connection (the bus names its connection)."""
    pids = set()
    for entry in client.client_list():
        name = str(entry.get("name", ""))
        if name.startswith("sessionmw-bus-"):
            pids.add(int(name.rsplit("-", 1)[1]))
    return pids


def _wait_subscribers(client: redis.Redis, pids: set[int]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not pids <= _subscribers(client):
        if time.monotonic() > deadline:
            pytest.fail(f"no subscriber connection for {pids - _subscribers(client)}")
        threading.Event().wait(0.02)  # polling CLIENT LIST


SERVERS = [
    pytest.param(("gunicorn", 3), id="gunicorn-w3-flask"),
    pytest.param(("uvicorn", 2), id="uvicorn-workers2-starlette"),
]


@pytest.mark.parametrize("server", SERVERS)
def test_revocations_reach_every_worker(
    launch: Launch, redis_client: redis.Redis, server: tuple[str, int], redis_url: str
) -> None:
    kind, workers = server
    app, backend, stream = launch(kind, workers)
    app.expect(dict.fromkeys(("s1", "s2", "s3", "s4", "s5"), 200))  # warm every worker
    _wait_subscribers(redis_client, set(app.served().values()))

    # 1. redis-cli XADD, exactly as the SPEC shows it.
    subprocess.run(
        ["redis-cli", "-u", redis_url, "XADD", stream, "MAXLEN", "~", "100000", "*",
         "type", "session_revoked", "session_id", "s1"],
        check=True, capture_output=True,
    )  # fmt: skip
    record = backend.lookup("s1")
    assert record is not None
    assert record.status is SessionStatus.ACTIVE
    app.expect({"s1": 401, "s5": 200})

    # 2. A signed hook call served by one worker.
    status, body, first_pid = app.hook(
        [{"type": "session_revoked", "session_id": "s2"}], msg_id="msg_retry_me"
    )
    assert (status, body) == (200, {"applied": 1})
    app.until_every_worker("s2", 401)

    # 3. A user's sessions, through the stream.
    redis_client.xadd(stream, {"type": "user_sessions_revoked", "user_id": "u3"})
    app.expect({"s3": 401, "s4": 401, "s5": 200})

    # 4. The producer retries the hook call; it lands on another worker: a duplicate.
    deadline = time.monotonic() + DEADLINE
    while True:
        status, body, pid = app.hook(
            [{"type": "session_revoked", "session_id": "s2"}], msg_id="msg_retry_me"
        )
        # (Locally, a concurrent test run that FLUSHDBs database 15 would erase the
        # replay key and make this an "applied": 1.)
        assert (status, body) == (200, {"applied": 0, "duplicate": True}), (status, body)
        if pid != first_pid:
            break
        assert time.monotonic() < deadline, "the retry never reached another worker"
    assert redis_client.xlen(stream) == 3  # XADD, the hook's event, the user event


def test_preload_every_worker_has_a_live_subscriber(
    launch: Launch, redis_client: redis.Redis
) -> None:
    """``gunicorn --preload -w 4``: the gate is built in the master before the fork;
    each worker starts its own subscriber and nothing deadlocks."""
    app, _, stream = launch("gunicorn", 4, "--preload")
    app.until_every_worker("s6", 200)
    workers = set(app.served().values())
    assert len(workers) == 4
    _wait_subscribers(redis_client, workers)
    redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s6"})
    app.until_every_worker("s6", 401)


@pytest.mark.parametrize("server", SERVERS)
def test_redis_restarted_empty_under_load(
    launch: Launch, server: tuple[str, int], tmp_path: Path
) -> None:
    """Kill Redis while the app serves, restart it empty: valid sessions keep working
    through the backend meanwhile (no 5xx), every worker reconnects by itself,
    detects the gap and flushes its cache."""
    kind, workers = server
    own = RedisServer()
    own.start()
    try:
        # A long outage TTL: only the gap flush can make a cached record re-checked.
        app, backend, stream = launch(kind, workers, bus=own.url,
                                      env={"SESSIONMW_BUS_OUTAGE_TTL": "600"})  # fmt: skip
        app.until_every_worker("s1", 200)
        _wait_subscribers(own.client(), set(app.served().values()))

        own.kill()
        # Outage: cached and uncached valid sessions still work, through the backend.
        statuses = [status for _, status in app.burst("s1") + app.burst("s5")]
        assert set(statuses) == {200}, statuses
        # Revoked in the store only (no event can be published now).
        assert backend.set_status("s1", SessionStatus.REVOKED)
        statuses = [status for _, status in app.burst("s1")]
        assert set(statuses) == {200}, "cached, outage TTL 600 s: the record still serves"

        own.start()
        # Each worker reconnects, sees the stream gone and flushes: s1 is re-fetched.
        app.until_every_worker("s1", 401)
        deadline = time.monotonic() + DEADLINE
        while app.text().count("bus.gap_detected") < workers:
            assert time.monotonic() < deadline, app.text()[-3000:]
            threading.Event().wait(0.05)
        _wait_subscribers(own.client(), set(app.served().values()))
        # And the new stream is followed.
        own.client().xadd(stream, {"type": "session_revoked", "session_id": "s5"})
        app.until_every_worker("s5", 401)
        assert not [status for status in app.statuses if status >= 500]
    finally:
        own.kill()
