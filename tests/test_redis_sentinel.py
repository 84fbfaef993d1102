"""``redis+sentinel://`` (SPEC section 12) under a real multi-worker server.

A Sentinel setup (one master, one replica, three sentinels; tests/engines.py) is the
store and the bus of the Starlette example under ``uvicorn --workers 2``. A logout
must be refused by every worker before a ``SENTINEL FAILOVER``, after it, and after
the master process is killed (SIGKILL by PID); a hook call replayed after the
failover, on new connections spread over the workers, is a duplicate everywhere (the
replay guard's key reached the replica before the failover).

Which worker answered comes from uvicorn's access log (each request carries a unique
``?n=``). Waits are polls with deadlines.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sessionmw.signing import new_secret, signed_request
from tests import engines
from tests.servers import access_logged, clean_env, free_port, running, served_by

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKERS = 2
SECRET = new_secret()
HEADER = "X-Device-Session-ID"
HOOK = "/_internal/session-invalidation"
DEADLINE = 25.0
#: Refusals in a row, spread over every worker, that close a revocation poll.
IN_A_ROW = 12


@dataclass
class Server:
    """The running example; which worker answered comes from its access log."""

    base: str
    log: Path
    http: httpx.Client
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def request(
        self,
        method: str,
        path: str,
        *,
        session: str | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        json: object = None,
    ) -> tuple[int, httpx.Response]:
        """One request on a new connection (so the workers share them): (n, response)."""
        n = next(self.counter)
        sent = {"connection": "close", **(headers or {})}
        if session is not None:
            sent[HEADER] = session
        url = f"{self.base}{path}?n={n}"
        return n, self.http.request(method, url, headers=sent, content=content, json=json)

    def pids(self, numbers: set[int]) -> dict[int, int]:
        """Request number -> worker PID, once the access log has all of ``numbers``."""
        found: dict[int, int] = {}

        def logged() -> bool:
            found.update(served_by("uvicorn", self.log))
            return numbers <= found.keys()

        engines.wait_until(logged, 10, "the access log")
        return found

    def login(self, user: str) -> str:
        """POST /login until it answers 200 (a 503 while the store fails over)."""
        session: list[str] = []

        def done() -> bool:
            _, response = self.request("POST", "/login", json={"user_id": user})
            assert response.status_code in (200, 503), response.text
            if response.status_code == 200:
                session.append(response.json()["session_id"])
            return bool(session)

        engines.wait_until(done, DEADLINE, "a login")
        return session[0]

    def burst(self, session: str, count: int) -> list[tuple[int, int]]:
        with ThreadPoolExecutor(4) as pool:
            results = pool.map(
                lambda _: self.request("GET", "/whoami", session=session), range(count)
            )
            return [(n, response.status_code) for n, response in results]

    def warm(self, session: str) -> None:
        """Until every worker has answered 200 for ``session`` (each has it cached)."""
        seen: set[int] = set()

        def every_worker() -> bool:
            results = self.burst(session, WORKERS * 4)
            ok = [n for n, status in results if status == 200]
            pids = self.pids(set(ok))
            seen.update(pids[n] for n in ok)
            return len(seen) >= WORKERS

        engines.wait_until(every_worker, DEADLINE, "every worker to serve the session")

    def refused_everywhere(self, session: str) -> None:
        """Until IN_A_ROW refusals in a row, spread over every worker; a 200 before that
        is a worker that has not applied the event yet, anything else fails."""
        run: list[int] = []

        def refused() -> bool:
            nonlocal run
            for n, status in self.burst(session, WORKERS * 3):
                assert status in (200, 401), status
                run = [*run, n] if status == 401 else []
            if len(run) < IN_A_ROW:
                return False
            pids = self.pids(set(run))
            return len({pids[n] for n in run}) >= WORKERS

        engines.wait_until(refused, DEADLINE, "every worker to refuse the session")

    def logout_reaches_every_worker(self, user: str) -> None:
        session = self.login(user)
        self.warm(session)
        _, response = self.request("POST", "/logout", session=session)
        assert (response.status_code, response.json()) == (200, {"revoked": True})
        self.refused_everywhere(session)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[engines.SentinelEngine]:
    engines.require("a Sentinel setup")
    with engines.sentinel() as engine:
        yield engine


@pytest.fixture(scope="module")
def server(
    sentinel: engines.SentinelEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sentinel-server")
    env = clean_env({
        "SESSIONMW_BACKEND": sentinel.url,
        "SESSIONMW_BUS": sentinel.url,
        "SESSIONMW_STREAM": f"sessionmw:test:{uuid.uuid4().hex}",
        "SESSIONMW_INVALIDATION_SECRET": SECRET,
        "SESSIONMW_BACKEND_TIMEOUT": "1",
        "SESSIONMW_STALE_IF_ERROR": "30",
    })  # fmt: skip
    port = free_port()
    log = folder / "access.log"
    argv = access_logged("uvicorn", "examples.starlette_app:app", port, log,
                         "--workers", str(WORKERS))  # fmt: skip
    with httpx.Client(timeout=10) as http, running(argv, env, port=port) as base:
        yield Server(base, log, http)


def test_logout_reaches_every_worker_before_failover(server: Server) -> None:
    """Sentinel's master as store and bus: a logout is refused by both workers."""
    server.logout_reaches_every_worker(f"u-before-{uuid.uuid4().hex}")


def test_failover_keeps_the_bus_and_the_replay_guard(
    server: Server, sentinel: engines.SentinelEngine
) -> None:
    """A signed hook call revokes a session on every worker; SENTINEL FAILOVER; the
    same call replayed on new connections answers ``duplicate: true`` on every worker
    (the guard's key lives in the new master too); a logout after the failover is
    refused by every worker (their subscribers followed the new master)."""
    victim = server.login(f"u-hook-{uuid.uuid4().hex}")
    server.warm(victim)
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": victim}])
    _, first = server.request("POST", HOOK, headers=headers, content=body)
    assert (first.status_code, first.json()) == (200, {"applied": 1})
    server.refused_everywhere(victim)

    sentinel.wait_replicated()
    old = sentinel.master().port
    new = sentinel.failover()
    assert new != old

    replayed: dict[int, int] = {}  # request number -> status

    def duplicate_everywhere() -> bool:
        n, response = server.request("POST", HOOK, headers=headers, content=body)
        if response.status_code == 503:  # the guard's connection is moving over
            return False
        assert (response.status_code, response.json()) == (
            200,
            {"applied": 0, "duplicate": True},
        ), response.text
        replayed[n] = response.status_code
        pids = server.pids(set(replayed))
        return len({pids[k] for k in replayed}) >= WORKERS

    engines.wait_until(duplicate_everywhere, DEADLINE, "a duplicate answer from every worker")
    server.logout_reaches_every_worker(f"u-after-failover-{uuid.uuid4().hex}")


def test_logout_reaches_every_worker_after_the_master_is_killed(
    server: Server, sentinel: engines.SentinelEngine
) -> None:
    """SIGKILL of the master's process: once the sentinels promote the replica, a
    login works and its logout is refused by every worker."""
    sentinel.wait_replicated()
    old = sentinel.master().port
    new = sentinel.kill_master()
    assert new != old
    server.logout_reaches_every_worker(f"u-after-kill-{uuid.uuid4().hex}")
