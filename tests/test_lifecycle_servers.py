"""The lifecycle routes of SPEC section 10 (``POST /login``, ``/logout``,
``/logout-others``, ``GET /devices``) through every example under its usual server.

* One worker each, on a fresh SQLite file (the example creates the table at start-up):
  login, whoami, devices, a second login, logout-others, logout.
* ``gunicorn -w 3`` (Flask) and ``uvicorn --workers 2`` (Starlette) with a Redis bus and
  one SQLite store shared by the workers: a logout served by one worker is refused by
  every worker that had the session cached, within a propagation bound.
* The idle timeout (3 s, touch interval 0.5 s) across uvicorn workers: a session in
  steady use through one worker is not refused by another worker that has not seen
  it for longer than the timeout; left alone, it is refused everywhere.

Which worker answered is read from the server's access log (each request carries a
unique ``?n=``), so the examples expose nothing extra. Waits are polling loops with
deadlines; the only time-based waits are the idle timeout itself.
"""

from __future__ import annotations

import http.client
import itertools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionmw import SessionStatus
from sessionmw.backends.sql import SQLBackend
from tests.conftest import REDIS_URL, require_service
from tests.servers import (
    access_logged,
    clean_env,
    free_port,
    gunicorn,
    running,
    served_by,
    uvicorn,
)

pytestmark = pytest.mark.slow

HEADER = "X-Device-Session-ID"
DEVICE_KEYS = {"session_id", "issued_at", "last_seen", "current"}

EXAMPLES = {
    "starlette-uvicorn": ("examples.starlette_app:app", "uvicorn"),
    "fastapi-uvicorn": ("examples.fastapi_app:app", "uvicorn"),
    "django-uvicorn": ("examples.django_app.asgi:application", "uvicorn"),
    "flask-gunicorn": ("examples.flask_app:app", "gunicorn"),
    "wsgi-gunicorn": ("examples.wsgi_app:app", "gunicorn"),
    "django-gunicorn": ("examples.django_app.wsgi:application", "gunicorn"),
}

#: A logout must be refused by every worker within this many seconds.
PROPAGATION_BOUND = 2.0
#: Consecutive refusals (spread over every worker) that close the logout poll.
CONSECUTIVE = 30
IDLE_TIMEOUT = 3.0
TOUCH_INTERVAL = 0.5

#: One client for every request (``httpx.get`` builds a client, and its TLS context,
#: per call: ~0.1 s each). Requests that must spread over workers send
#: ``connection: close``, so no connection is reused for them.
HTTP = httpx.Client(timeout=10)


def _login(base: str, user_id: str) -> str:
    response = HTTP.post(f"{base}/login", json={"user_id": user_id}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session_id"}
    session_id: str = body["session_id"]
    return session_id


def _call(base: str, method: str, path: str, session_id: str) -> httpx.Response:
    return HTTP.request(method, base + path, headers={HEADER: session_id})


def _status(base: str, session_id: str) -> int:
    return _call(base, "GET", "/whoami", session_id).status_code


def _devices(base: str, session_id: str) -> list[dict[str, Any]]:
    response = _call(base, "GET", "/devices", session_id)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()
    assert all(set(device) == DEVICE_KEYS for device in listed), listed
    return listed


# -- every example, one worker ----------------------------------------------------------


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_lifecycle_routes_under_real_server(example: str, tmp_path: Path) -> None:
    """login -> whoami 200 -> devices lists it (current) -> second login ->
    logout-others answers 1 -> the other session 401 -> logout -> 401; the store agrees."""
    app, server = EXAMPLES[example]
    url = f"sqlite:///{tmp_path / 'sessions.db'}"  # no table yet: the example creates it
    port = free_port()
    argv = gunicorn(app, port) if server == "gunicorn" else uvicorn(app, port)
    with running(argv, clean_env({"SESSIONMW_BACKEND": url}), port=port) as base:
        for bad in (b"", b"not json", b"[]", b"{}", b'{"user_id": 5}', b'{"user_id": ""}'):
            response = HTTP.post(
                f"{base}/login", content=bad, headers={"content-type": "application/json"}
            )
            assert (response.status_code, response.json()) == (
                400,
                {"error": "invalid_request"},
            ), bad

        before = time.time()
        first = _login(base, "u-1")
        whoami = _call(base, "GET", "/whoami", first)
        assert (whoami.status_code, whoami.json()) == (200, {"user_id": "u-1", "session_id": first})
        (only,) = _devices(base, first)
        assert (only["session_id"], only["current"]) == (first, True)
        assert before - 1 <= only["issued_at"] <= time.time() + 1
        assert only["last_seen"] >= only["issued_at"]

        second = _login(base, "u-1")
        stranger = _login(base, "u-2")
        assert _status(base, second) == 200
        listed = _devices(base, first)
        assert [(d["session_id"], d["current"]) for d in listed] == [
            (second, False),
            (first, True),
        ]
        assert [d["session_id"] for d in _devices(base, second)] == [second, first]

        others = _call(base, "POST", "/logout-others", first)
        assert (others.status_code, others.json()) == (200, {"revoked": 1})
        assert _status(base, second) == 401
        assert _status(base, first) == 200
        assert _status(base, stranger) == 200
        assert [d["session_id"] for d in _devices(base, first)] == [first]

        logout = _call(base, "POST", "/logout", first)
        assert (logout.status_code, logout.json()) == (200, {"revoked": True})
        assert _status(base, first) == 401
        assert _call(base, "GET", "/devices", first).status_code == 401
        assert _call(base, "POST", "/logout", first).status_code == 401
        assert _status(base, stranger) == 200

    store = SQLBackend(url)
    try:
        statuses = {sid: store.get(sid).status for sid in (first, second, stranger)}  # type: ignore[union-attr]
    finally:
        store.close()
    assert statuses == {
        first: SessionStatus.REVOKED,
        second: SessionStatus.REVOKED,
        stranger: SessionStatus.ACTIVE,
    }


# -- several workers, a Redis bus -------------------------------------------------------


@dataclass
class Cluster:
    """A multi-worker example server; which worker answered comes from its access log."""

    base: str
    port: int
    kind: str
    workers: int
    log: Path
    output: Path
    store_url: str
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def whoami(self, session_id: str) -> tuple[int, int, float]:
        """GET /whoami on a new connection: (request number, status, send time)."""
        n = next(self.counter)
        sent = time.monotonic()
        response = HTTP.get(
            f"{self.base}/whoami?n={n}",
            headers={HEADER: session_id, "connection": "close"},
            timeout=10,
        )
        return n, response.status_code, sent

    def burst(self, session_id: str, count: int) -> list[tuple[int, int, float]]:
        """``count`` concurrent requests, so that every worker gets some."""
        with ThreadPoolExecutor(max(2, self.workers * 2)) as pool:
            return list(pool.map(lambda _: self.whoami(session_id), range(count)))

    def pids(self, numbers: set[int], deadline: float = 10.0) -> dict[int, int]:
        """Request number -> worker PID, once the access log has all of ``numbers``."""
        end = time.monotonic() + deadline
        while True:
            served = served_by(self.kind, self.log)
            if numbers <= served.keys():
                return served
            if time.monotonic() > end:
                pytest.fail(f"{len(numbers - served.keys())} requests not in the access log")
            time.sleep(0.02)  # polling the access log file

    def warm(self, session_id: str, deadline: float = 15.0) -> set[int]:
        """Requests until every worker has answered ``session_id`` with 200 (so each one
        holds it in its cache); the workers' PIDs."""
        end = time.monotonic() + deadline
        seen: set[int] = set()
        while len(seen) < self.workers:
            if time.monotonic() > end:
                pytest.fail(f"only workers {seen} served the session within {deadline}s")
            results = self.burst(session_id, self.workers * 4)
            assert all(status == 200 for _, status, _ in results), results
            served = self.pids({n for n, _, _ in results})
            seen |= {served[n] for n, _, _ in results}
        return seen

    def connect(self, pid: int, deadline: float = 15.0) -> http.client.HTTPConnection:
        """A keep-alive connection served by worker ``pid`` (uvicorn keeps a connection
        on the worker that accepted it)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            n = next(self.counter)
            conn.request("GET", f"/healthz?n={n}")
            conn.getresponse().read()
            if self.pids({n})[n] == pid:
                return conn
            conn.close()
        pytest.fail(f"no connection reached worker {pid} within {deadline}s")

    def on(self, conn: http.client.HTTPConnection, pid: int, session_id: str) -> int:
        """GET /whoami on a kept-alive connection to worker ``pid``: the status."""
        n = next(self.counter)
        conn.request("GET", f"/whoami?n={n}", headers={HEADER: session_id})
        response = conn.getresponse()
        response.read()
        assert self.pids({n})[n] == pid, "the connection moved to another worker"
        return response.status

    def text(self) -> str:
        return self.output.read_text(errors="replace")


CLUSTERS = {
    "gunicorn-w3-flask": ("gunicorn", "examples.flask_app:app", 3),
    "uvicorn-workers2-starlette": ("uvicorn", "examples.starlette_app:app", 2),
}


@pytest.fixture(scope="module", params=list(CLUSTERS))
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """An example with several workers, a Redis bus on a stream of its own, one SQLite
    store for every worker (created by the workers at start-up), the idle timeout on."""
    require_service("redis", REDIS_URL, 6379)
    import redis

    kind, app, workers = CLUSTERS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    store_url = f"sqlite:///{folder / 'sessions.db'}"
    stream = f"sessionmw:test:lifecycle:{uuid.uuid4().hex}"
    env = clean_env({
        "SESSIONMW_BACKEND": store_url,
        "SESSIONMW_BUS": REDIS_URL,
        "SESSIONMW_STREAM": stream,
        "SESSIONMW_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "SESSIONMW_TOUCH_INTERVAL": str(TOUCH_INTERVAL),
    })  # fmt: skip
    port = free_port()
    log, output = folder / "access.log", folder / "output.log"
    if kind == "gunicorn":
        argv = access_logged(kind, app, port, log, "-w", str(workers), "--graceful-timeout", "5")
    else:
        extra = ("--workers", str(workers), "--timeout-keep-alive", "30")
        argv = access_logged(kind, app, port, log, *extra)
    try:
        with running(argv, env, port=port, output=output) as base:
            yield Cluster(base, port, kind, workers, log, output, store_url)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream)
        client.close()


def test_logout_reaches_every_worker(cluster: Cluster, record_property: Any) -> None:
    """A session cached by every worker; POST /logout served by one of them; within
    the bound, every worker refuses it (CONSECUTIVE refusals in a row, spread over all
    workers), the store says revoked, another user's session still passes."""
    session_id = _login(cluster.base, f"u-logout-{cluster.kind}")
    warming = time.monotonic()
    pids = cluster.warm(session_id)
    bystander = _login(cluster.base, f"u-bystander-{cluster.kind}")
    assert len(pids) == cluster.workers

    logout = HTTP.post(
        f"{cluster.base}/logout", headers={HEADER: session_id, "connection": "close"}, timeout=10
    )
    done = time.monotonic()
    assert (logout.status_code, logout.json()) == (200, {"revoked": True})

    answers: list[tuple[int, int, float]] = []
    run: list[int] = []  # request numbers of the current run of refusals
    while True:
        if time.monotonic() - done > PROPAGATION_BOUND + 5:
            pytest.fail(f"no run of {CONSECUTIVE} refusals: {[s for _, s, _ in answers]}")
        results = sorted(cluster.burst(session_id, cluster.workers * 3), key=lambda r: r[2])
        answers += results
        for n, status, _ in results:
            run = [*run, n] if status == 401 else []
        # Used all along (the idle timeout is on): another user's session still passes.
        assert cluster.whoami(bystander)[1] == 200
        if len(run) >= CONSECUTIVE:
            served = cluster.pids(set(run))
            if {served[n] for n in run} >= pids:
                break
    confirmed = time.monotonic() - done
    last_pass = max((sent for _, status, sent in answers if status == 200), default=None)
    propagation = 0.0 if last_pass is None else max(0.0, last_pass - done)
    record_property("logout_propagation_s", round(propagation, 4))
    record_property("logout_confirmed_s", round(confirmed, 4))
    print(
        f"\n{cluster.kind} x{cluster.workers}: "
        + ("no 200 after the logout answered" if last_pass is None
           else f"last 200 sent +{propagation * 1000:.1f} ms after the logout answered")
        + f"; {len(run)} refusals in a row over every worker by +{confirmed * 1000:.0f} ms"
    )  # fmt: skip
    assert propagation <= PROPAGATION_BOUND
    # Every worker served the session within the idle timeout before refusing it, so
    # none dropped it from its cache for idleness: the refusals came from the event.
    assert time.monotonic() - warming < IDLE_TIMEOUT, "too slow to tell event from idleness"
    assert {status for _, status, _ in answers} <= {200, 401}

    store = SQLBackend(cluster.store_url)
    try:
        stored = store.get(session_id)
    finally:
        store.close()
    assert stored is not None
    assert stored.status is SessionStatus.REVOKED


def test_idle_timeout_across_workers(cluster: Cluster) -> None:
    """Steady use for ~6 s, a request every ~0.2 s: never refused, although (uvicorn)
    one worker sees none of it for more than the idle timeout and then serves it; left
    alone for longer than the timeout, the session is refused by every worker."""
    session_id = _login(cluster.base, f"u-idle-{cluster.kind}")
    pids = sorted(cluster.warm(session_id))
    pinned = {pid: cluster.connect(pid) for pid in pids} if cluster.kind == "uvicorn" else {}
    statuses: list[int] = []
    start = time.monotonic()
    try:
        if pinned:
            quiet, busy = pids[0], pids[1]
            statuses.append(cluster.on(pinned[quiet], quiet, session_id))
            quiet_since = time.monotonic()
            # Only the busy worker sees the session, for longer than the idle timeout.
            while time.monotonic() - quiet_since < IDLE_TIMEOUT + 1.0:
                statuses.append(cluster.on(pinned[busy], busy, session_id))
                time.sleep(0.2)  # the pace of steady use
            # The quiet worker's own record is >3 s old: it must re-read the store,
            # which the busy worker's flushes keep fresh.
            statuses.append(cluster.on(pinned[quiet], quiet, session_id))
        while time.monotonic() - start < 6.0:
            statuses += [status for _, status, _ in cluster.burst(session_id, 1)]
            time.sleep(0.2)  # the pace of steady use
        assert statuses
        assert set(statuses) == {200}, statuses

        # Left alone: wait (a real timeout of the feature) until the store's last_seen,
        # no longer moving, is older than the idle timeout.
        store = SQLBackend(cluster.store_url)
        deadline = time.monotonic() + IDLE_TIMEOUT + 10
        try:
            while True:
                stored = store.get(session_id)
                assert stored is not None
                assert stored.last_seen is not None
                if time.time() - stored.last_seen > IDLE_TIMEOUT + TOUCH_INTERVAL:
                    break
                assert time.monotonic() < deadline, "last_seen kept moving"
                time.sleep(0.1)  # polling the store while the session idles
        finally:
            store.close()
        for pid, conn in pinned.items():
            assert cluster.on(conn, pid, session_id) == 401
        refused = cluster.burst(session_id, cluster.workers * 4)
        assert {status for _, status, _ in refused} == {401}
        assert "reason=idle" in cluster.text() or '"reason": "idle"' in cluster.text()
    finally:
        for conn in pinned.values():
            conn.close()


def test_examples_create_the_store_once_under_racing_workers(cluster: Cluster) -> None:
    """Several workers started together on a fresh SQLite file: the table exists once,
    with the lifecycle columns, and no worker failed to start (every one served)."""
    store = SQLBackend(cluster.store_url)
    try:
        assert store.schema_missing() == []
    finally:
        store.close()
    assert "Traceback" not in cluster.text()
