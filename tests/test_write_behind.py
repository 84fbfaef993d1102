"""Activity write-behind under real traffic (SPEC section 11): requests driven
in-process through the real middlewares (ASGI and WSGI), writes counted by the
servers themselves.

* A burst of requests writes ``last_seen`` at most once per session per
  ``touch_interval``: PostgreSQL's ``pg_stat_user_tables.n_tup_upd`` for the test's
  table, Redis's ``INFO commandstats`` (``evalsha``, and the ``hset`` the script runs).
* A store that hangs (a wrapper whose ``touch_many`` blocks for 2 s; a PostgreSQL
  table locked by another transaction) delays the flush and never a request.
* Shutdown (``Gate.stop``, ASGI lifespan shutdown) writes what is pending.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from sessionmw import Settings
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.backends import MemoryBackend
from sessionmw.backends.sql import SQLBackend
from sessionmw.gate import Gate, forget_gates
from sessionmw.sessions import Sessions
from sessionmw.wsgi import DeviceSessionMiddleware as WSGIMiddleware

pytestmark = pytest.mark.usefixtures("fresh_gates")

Message = MutableMapping[str, Any]
HEADER = b"x-device-session-id"
INTERVAL = 0.5
BURST = 2.0
SESSIONS = 5
#: How long a hanging store hangs.
HANG = 2.0
#: A request may take this long, at most, while the store hangs (well below HANG;
#: typically under 10 ms in-process, the rest is headroom for a loaded machine).
MAX_LATENCY = 0.5


# -- driving the middlewares in-process ------------------------------------------------


async def _inner(scope: Message, receive: Callable[[], Awaitable[Message]],
                 send: Callable[[Message], Awaitable[None]]) -> None:  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def asgi_get(middleware: DeviceSessionMiddleware, session_id: str) -> int:
    """One GET through the ASGI middleware; its status."""
    status = 0

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (HEADER, session_id.encode())],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await middleware(scope, _receive, send)
    return status


def _wsgi_inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def wsgi_get(middleware: WSGIMiddleware, session_id: str) -> int:
    """One GET through the WSGI middleware; its status."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        statuses.append(status)
        return None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "HTTP_X_DEVICE_SESSION_ID": session_id,
    }
    b"".join(middleware(environ, start_response))
    return int(statuses[0].split()[0])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


def record_touches(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of the gate's successful ``touch_many`` calls (the real store's
    method still does the work)."""
    assert gate.activity is not None
    store = gate.activity.store
    assert store is not None
    real = store.touch_many
    sizes: list[int] = []

    def touch_many(items: Sequence[tuple[str, float]]) -> None:
        real(items)
        sizes.append(len(items))

    monkeypatch.setattr(store, "touch_many", touch_many)
    return sizes


# -- server-side write counters ----------------------------------------------------------


def pg_updates(postgres_url: str, table: str) -> int:
    """``n_tup_upd`` of ``table``, read on a fresh connection with a fresh snapshot."""
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            found = conn.execute(
                sa.text("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = :t"),
                {"t": table},
            ).scalar()
    finally:
        engine.dispose()
    return int(found or 0)


def command_calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# -- a burst of requests: one write per session per touch_interval ---------------------


async def burst(middleware: DeviceSessionMiddleware, session_ids: list[str]) -> tuple[int, float]:
    """Requests round-robin over the sessions for BURST seconds: (count, end wall time)."""
    count = 0
    started = time.monotonic()
    while time.monotonic() - started < BURST:
        for session_id in session_ids:
            assert await asgi_get(middleware, session_id) == 200
            count += 1
    return count, time.time()


def per_session_bound() -> int:
    """Writes one session may see in BURST seconds: one per interval, the partial
    first round, and the shutdown flush."""
    return int(BURST / INTERVAL) + 2


def check_last_seen(sessions: Sessions, session_ids: list[str], end: float) -> None:
    for session_id in session_ids:
        got = sessions.get(session_id)
        assert got is not None
        assert got.last_seen is not None
        assert end - 1.0 < got.last_seen <= time.time()


async def test_burst_on_postgres_writes_once_per_interval(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"w_{uuid.uuid4().hex[:16]}"
    settings = Settings(backend=f"{postgres_url}?table={table}", touch_interval=INTERVAL)
    sessions = Sessions(settings)
    sessions.create_schema()
    try:
        made = [sessions.create(f"user-{n}").session_id for n in range(SESSIONS)]
        middleware = DeviceSessionMiddleware(_inner, settings)
        gate = middleware.gate
        assert gate is sessions.gate
        sizes = record_touches(gate, monkeypatch)
        assert pg_updates(postgres_url, table) == 0  # inserts only so far
        gate.start()
        requests, end = await burst(middleware, made)
        gate.stop()  # the shutdown flush
        assert gate.activity is not None
        during = gate.activity.writes
        # Each PostgreSQL backend reports its counters when it exits: close the pool.
        gate.backend.close()  # type: ignore[attr-defined]
        expected = sum(sizes)
        assert wait_for(lambda: pg_updates(postgres_url, table) >= expected)
        updated = pg_updates(postgres_url, table)
        assert updated == expected, "every row update is a touch_many row"
        assert requests > 20 * SESSIONS * per_session_bound(), requests
        assert SESSIONS <= updated <= SESSIONS * per_session_bound(), (updated, requests)
        assert during >= 3, "the flusher wrote during the burst, not only at shutdown"
        assert all(size <= SESSIONS for size in sizes), "one statement per flush"
        check_last_seen(sessions, made, end)
    finally:
        forget_gates()
        dropper = SQLBackend(f"{postgres_url}?table={table}")
        dropper.drop_schema()
        dropper.close()
        sessions.gate.backend.close()  # type: ignore[attr-defined]


async def test_burst_on_redis_writes_once_per_interval(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(backend=redis_url, touch_interval=INTERVAL)
    sessions = Sessions(settings)
    made = [sessions.create(f"user-{n}").session_id for n in range(SESSIONS)]
    middleware = DeviceSessionMiddleware(_inner, settings)
    gate = middleware.gate
    assert gate is sessions.gate
    sizes = record_touches(gate, monkeypatch)
    try:
        scripts, hsets = command_calls(redis_client, "evalsha"), command_calls(redis_client, "hset")
        gate.start()
        requests, end = await burst(middleware, made)
        gate.stop()
        scripts = command_calls(redis_client, "evalsha") - scripts
        hsets = command_calls(redis_client, "hset") - hsets
        assert gate.activity is not None
        flushes = gate.activity.writes
        assert requests > 20 * SESSIONS * per_session_bound(), requests
        # One script call per flush (plus, at most, one NOSCRIPT retry after a restart).
        assert flushes <= scripts <= flushes + 1, (scripts, flushes)
        assert flushes <= per_session_bound()
        assert flushes >= 3, "the flusher wrote during the burst, not only at shutdown"
        # One HSET per session per flush, run by the script.
        assert hsets == sum(sizes), (hsets, sizes)
        assert SESSIONS <= hsets <= SESSIONS * per_session_bound(), (hsets, requests)
        check_last_seen(sessions, made, end)
    finally:
        forget_gates()
        await gate.backend.aclose()  # type: ignore[attr-defined]  # ASGI: the loop's client


# -- a store outage delays the flush, never a request --------------------------------------


class HangingStore(MemoryBackend):
    """A memory store whose ``touch_many`` hangs for HANG seconds, then fails, while
    ``down`` is set (lookups still answer: the sessions are cached anyway)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.entered = threading.Event()
        self.hanging = threading.Event()
        self.release = threading.Event()

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        if self.down.is_set():
            self.entered.set()
            self.hanging.set()
            try:
                self.release.wait(HANG)  # the outage itself, not a wait for a race
            finally:
                self.hanging.clear()
            raise ConnectionError("store down")
        super().touch_many(items)


def test_hanging_store_never_slows_a_request() -> None:
    """WSGI: touch_many hangs 2 s in the flusher thread; requests keep answering 200,
    each far faster than that; the writes land once the store is back."""
    store = HangingStore()
    settings = Settings(backend=store, touch_interval=0.1)
    sessions = Sessions(settings)
    made = [sessions.create(f"user-{n}").session_id for n in range(20)]
    middleware = WSGIMiddleware(_wsgi_inner, settings)
    gate = middleware.gate
    assert gate is sessions.gate
    assert gate.activity is not None
    for session_id in made:  # cached as active
        assert wsgi_get(middleware, session_id) == 200

    store.down.set()
    latencies: list[float] = []
    statuses: set[int] = set()

    def one_round() -> None:
        for session_id in made:
            started = time.perf_counter()
            statuses.add(wsgi_get(middleware, session_id))
            latencies.append(time.perf_counter() - started)

    deadline = time.monotonic() + 5
    while not store.entered.is_set():  # requests give the flusher something to write
        assert time.monotonic() < deadline, "the flusher never tried to write"
        one_round()
    hang_started = time.monotonic()
    latencies.clear()
    while time.monotonic() - hang_started < HANG - 0.5:
        one_round()
    assert store.hanging.is_set(), "the requests above ran while touch_many hung"
    assert gate.activity.failures == 0
    assert statuses == {200}
    assert len(latencies) > 1000
    assert max(latencies) < MAX_LATENCY, max(latencies)
    end = time.time()

    store.down.clear()
    assert wait_for(lambda: gate.activity is not None and gate.activity.failures >= 1)
    # The batch that failed is written on a later round: nothing was lost.
    for session_id in made:
        assert wait_for(lambda sid=session_id: (store.get(sid).last_seen or 0) >= end - 0.1)  # type: ignore[misc,union-attr]
    gate.stop()


async def test_locked_postgres_table_never_slows_a_request(postgres_url: str) -> None:
    """ASGI on PostgreSQL: another transaction holds the table locked against writes;
    the flusher's UPDATE waits (seen in ``pg_locks``), requests do not; once the lock
    goes, the pending ``last_seen`` lands."""
    table = f"w_{uuid.uuid4().hex[:16]}"
    url = f"{postgres_url}?table={table}"
    settings = Settings(backend=url, touch_interval=0.1, backend_timeout=HANG)
    sessions = Sessions(settings)
    sessions.create_schema()
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    locker = engine.connect()
    try:
        made = [sessions.create(f"user-{n}").session_id for n in range(10)]
        middleware = DeviceSessionMiddleware(_inner, settings)
        gate = middleware.gate
        assert gate.activity is not None
        for session_id in made:
            assert await asgi_get(middleware, session_id) == 200
        locker.execute(sa.text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))  # reads pass

        def waiting() -> int:
            with engine.connect() as conn:
                found = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                        " WHERE c.relname = :t AND NOT l.granted"
                    ),
                    {"t": table},
                ).scalar()
            return int(found or 0)

        latencies: list[float] = []
        statuses: set[int] = set()

        async def one_round() -> None:
            for session_id in made:
                started = time.perf_counter()
                statuses.add(await asgi_get(middleware, session_id))
                latencies.append(time.perf_counter() - started)

        deadline = time.monotonic() + 5
        while not waiting():
            assert time.monotonic() < deadline, "the flusher's UPDATE never waited"
            await one_round()
        blocked = time.monotonic()
        latencies.clear()
        while time.monotonic() - blocked < 1.0:
            await one_round()
        assert waiting(), "the requests above ran while the UPDATE waited"
        assert statuses == {200}
        assert len(latencies) > 1000
        assert max(latencies) < MAX_LATENCY, max(latencies)
        end = time.time()
        locker.rollback()  # the lock goes
        for session_id in made:
            assert wait_for(
                lambda sid=session_id: (sessions.get(sid).last_seen or 0) >= end - 0.1  # type: ignore[misc,union-attr]
            )
    finally:
        locker.rollback()
        locker.close()
        forget_gates()
        sessions.gate.backend.close()  # type: ignore[attr-defined]
        dropper = SQLBackend(url)
        dropper.drop_schema()
        dropper.close()
        engine.dispose()


# -- shutdown writes what is pending -----------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    name = request.param
    if name == "memory":
        yield "memory://"
    elif name == "sqlite":
        yield f"sqlite:///{tmp_path / 'sessions.db'}"
    elif name == "postgres":
        url = f"{request.getfixturevalue('postgres_url')}?table=w_{uuid.uuid4().hex[:16]}"
        yield url
        forget_gates()
        dropper = SQLBackend(url)
        dropper.drop_schema()
        dropper.close()
    else:
        request.getfixturevalue("redis_client")  # flushed around the test
        yield request.getfixturevalue("redis_url")


def test_stop_writes_pending_last_seen(store_url: str) -> None:
    """An hour between flushes: nothing written during the requests, everything at
    ``Gate.stop()``."""
    settings = Settings(backend=store_url, touch_interval=3600)
    sessions = Sessions(settings)
    sessions.create_schema()
    made = [sessions.create(f"user-{n}") for n in range(3)]
    middleware = WSGIMiddleware(_wsgi_inner, settings)
    gate = middleware.gate
    gate.start()
    try:
        for session in made[:2]:
            for _ in range(3):
                assert wsgi_get(middleware, session.session_id) == 200
        seen = time.time()
        for session in made:
            got = sessions.get(session.session_id)
            assert got is not None
            assert got.last_seen == session.last_seen, "not before an hour, or shutdown"
        gate.stop()
        for session in made[:2]:
            got = sessions.get(session.session_id)
            assert got is not None
            assert got.last_seen is not None
            assert session.issued_at is not None
            assert session.issued_at < got.last_seen <= seen
        untouched = sessions.get(made[2].session_id)
        assert untouched is not None
        assert untouched.last_seen == made[2].last_seen, "no request, no write"
    finally:
        forget_gates()
        close = getattr(gate.backend, "close", None)
        if close is not None:
            close()


async def test_lifespan_shutdown_writes_pending_last_seen() -> None:
    store = MemoryBackend()
    settings = Settings(backend=store, touch_interval=3600)
    sessions = Sessions(settings)
    made = sessions.create("alice")
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:  # fmt: skip
        if scope["type"] != "lifespan":
            await _inner(scope, receive, send)
            return
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert await asgi_get(middleware, made.session_id) == 200
        assert store.get(made.session_id).last_seen == made.last_seen  # type: ignore[union-attr]
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    middleware = DeviceSessionMiddleware(app, settings)
    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    got = store.get(made.session_id)
    assert got is not None
    assert got.last_seen is not None
    assert made.last_seen is not None
    assert got.last_seen > made.last_seen
