"""The PostgreSQL bus (SPEC section 12) against a real PostgreSQL.

Each test works on its own events table (``?table=``, dropped afterwards), so tests
running at the same time never see each other's rows. Races are waited out by
polling with deadlines; where an ordering must be forced (an insert made while the
subscriber is disconnected), the bus's injected ``wait`` holds the reconnect.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import multiprocessing
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from sessionmw import BusUnavailable, ConfigError, MemoryCache, Sessions, SessionStatus, Settings
from sessionmw.backends import MemoryBackend
from sessionmw.backends.sql import SQLBackend
from sessionmw.bus import BusSink, bus_from_url, publish
from sessionmw.bus.postgres import PostgresBus, parse_url
from sessionmw.cache import MISS
from sessionmw.cli import main as cli_main
from sessionmw.events import Event, Flush, SessionRevoked, UserSessionsRevoked, apply_event
from sessionmw.gate import Gate
from sessionmw.records import SessionRecord
from sessionmw.replay import digest
from sessionmw.signing import new_secret, signed_request
from tests.polling import DEADLINE, wait_until
from tests.servers import access_logged, clean_env, free_port, running, seed_store, served_by
from tests.spec_cases import VALID

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("fresh_gates")]

HEADER = "X-Device-Session-ID"


class Sink:
    """Applies events to a MemoryCache like the gate does; records every call."""

    def __init__(self) -> None:
        now = time.time()
        self.cache = MemoryCache(
            MemoryBackend(
                [
                    SessionRecord(f"s{i}", "u", SessionStatus.ACTIVE, now + 3600, now)
                    for i in range(3)
                ]
            )
        )
        self.events: list[Event] = []
        self.sent_at: list[float | None] = []
        self.gaps: list[str] = []
        self.connects = 0

    def bus_event(self, event: Event, sent_at: float | None) -> None:
        apply_event(self.cache, event)
        self.events.append(event)
        self.sent_at.append(sent_at)

    def bus_connected(self) -> None:
        self.connects += 1

    def bus_disconnected(self) -> None:
        pass

    def bus_gap(self, reason: str) -> None:
        self.cache.clear()
        self.gaps.append(reason)


_: type[BusSink] = Sink


@pytest.fixture
def table() -> str:
    return f"t_pgbus_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus_url(postgres_url: str, table: str) -> Iterator[str]:
    url = f"{postgres_url}?table={table}"
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_replay")


@pytest.fixture
def sql(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection, standing in for psql or another producer."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def buses(bus_url: str) -> Iterator[Callable[..., PostgresBus]]:
    """Make buses on the test's table (stopped afterwards)."""
    made: list[PostgresBus] = []

    def make(**options: Any) -> PostgresBus:
        bus = PostgresBus(bus_url, **options)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.stop()


def _started(bus: PostgresBus, sink: Sink | None = None) -> Sink:
    sink = sink or Sink()
    bus.start(sink)
    wait_until(lambda: bus.connected, "the subscriber connects")
    return sink


def _insert(conn: psycopg.Connection[Any], table: str, *, notify: bool = True, **row: Any) -> int:
    row.setdefault("created_at", time.time())
    row.setdefault("type", "session_revoked")
    names = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    with conn.transaction():
        got = conn.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING id",  # noqa: S608
            tuple(row.values()),
        ).fetchone()
        if notify:
            conn.execute(f"NOTIFY {table}")
    assert got is not None
    return int(got[0])


def _psql(postgres_url: str, table: str, session_id: str) -> None:
    """The SPEC's producer, as typed into psql."""
    command = (
        f"INSERT INTO {table} (created_at, type, session_id) VALUES "  # noqa: S608
        f"(extract(epoch from now()), 'session_revoked', '{session_id}'); NOTIFY {table};"
    )
    subprocess.run(
        ["psql", postgres_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", command],
        check=True,
        capture_output=True,
        timeout=30,
    )


# -- configuration ------------------------------------------------------------------


def test_url_parsing_and_table_names(postgres_url: str) -> None:
    assert parse_url("postgresql://u@h:5433/db") == ("postgresql://u@h:5433/db", "sessionmw_events")
    assert parse_url("postgres://u@h/db?table=ev_1&sslmode=disable") == (
        "postgres://u@h/db?sslmode=disable",
        "ev_1",
    )
    for bad in ("Events", "1ev", "ev-1", "ev;drop", "x" * 49, ""):
        with pytest.raises(ConfigError) as caught:
            parse_url(f"postgresql://h/db?table={bad}")
        assert caught.value.key == "bus"
    with pytest.raises(ConfigError, match="more than once"):
        parse_url("postgresql://h/db?table=a&table=b")
    with pytest.raises(ConfigError) as caught:
        parse_url("postgresql://h/db?nosuchparam=1")
    assert caught.value.key == "bus"
    with pytest.raises(ConfigError) as caught:
        PostgresBus("postgresql://h/db", retention=0)
    assert caught.value.key == "bus_retention"
    bus = bus_from_url(f"{postgres_url}?table=ev_x", stream="s", retention=30)
    assert isinstance(bus, PostgresBus)
    assert (bus.table, bus.retention) == ("ev_x", 30.0)
    gate = Gate(Settings(bus=f"{postgres_url}?table=ev_y", bus_retention=45))
    assert isinstance(gate.bus, PostgresBus)
    assert gate.bus.retention == 45.0


def test_same_database_detection() -> None:
    bus = PostgresBus("postgresql://app@127.0.0.1/main?table=ev")
    same = [
        "postgresql+psycopg://app@localhost:5432/main",
        "postgresql://app:secret@127.0.0.1/main?table=device_sessions",
        "postgres://app@[::1]:5432/main",
    ]
    other = [
        "postgresql://app@127.0.0.1/other",
        "postgresql://admin@127.0.0.1/main",
        "postgresql://app@127.0.0.1:5433/main",
        "postgresql://app@db.internal/main",
        "sqlite:///main.db",
    ]
    for url in same:
        assert bus.same_database(make_url(url.replace("postgres://", "postgresql://"))), url
    for url in other:
        assert not bus.same_database(make_url(url)), url


# -- publishing and subscribing ----------------------------------------------------------


def test_events_reach_a_subscriber_with_their_fields(
    buses: Callable[..., PostgresBus], sql: psycopg.Connection[Any], table: str
) -> None:
    producer, subscriber = buses(), buses()
    sink = _started(subscriber)
    before = time.time()
    ids = producer.publish_ids([SessionRevoked("s0"), UserSessionsRevoked("u", 12.5), Flush()])
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    wait_until(lambda: len(sink.events) == 3, "three events applied")
    assert sink.events == [SessionRevoked("s0"), UserSessionsRevoked("u", 12.5), Flush()]
    assert all(s is not None and before - 1 <= s <= time.time() + 1 for s in sink.sent_at)
    # A user event without ``before`` is fixed at publication, the same for every reader.
    producer.publish([UserSessionsRevoked("u2")])
    wait_until(lambda: len(sink.events) == 4, "the user event applied")
    last = sink.events[-1]
    assert isinstance(last, UserSessionsRevoked)
    assert last.before is not None
    assert before - 1 <= last.before <= time.time() + 1
    # A row written by hand without ``before`` takes its created_at; a bad row is skipped.
    _insert(sql, table, type="user_sessions_revoked", user_id="u3", created_at=1000.0)
    _insert(sql, table, type="no_such_type", session_id="x")
    _insert(sql, table, session_id="s1")
    wait_until(lambda: len(sink.events) == 6, "the hand-written events applied")
    assert sink.events[4:] == [UserSessionsRevoked("u3", 1000.0), SessionRevoked("s1")]
    assert subscriber.stats()["bad_entries"] == 1
    assert sink.cache.lookup("s1").status is SessionStatus.REVOKED  # type: ignore[union-attr]


def test_a_new_subscriber_applies_what_was_published_just_before_it_started(
    buses: Callable[..., PostgresBus],
) -> None:
    """An event published up to 2 s (START_REPLAY) before a subscriber starts (a
    worker's start-up, before its first read) is applied on the first connect; an
    older one is not. The clocks are injected: the rows' created_at and the
    subscriber's start time are fixed numbers."""
    started_at = 1_000_000.0
    older = buses(clock=lambda: started_at - 2.1)
    recent = buses(clock=lambda: started_at - 1.5)
    older.publish([SessionRevoked("too-old")])
    recent.publish([SessionRevoked("just-before")])
    sink = _started(buses(clock=lambda: started_at))
    # Read during the connect, before ``connected`` turned true.
    assert sink.events == [SessionRevoked("just-before")]


def test_notify_wakes_the_subscriber_without_the_safety_net(
    request: pytest.FixtureRequest,
    store_url: str,
    bus_url: str,
    buses: Callable[..., PostgresBus],
) -> None:
    """publish() and the one-transaction revoke both NOTIFY the table's channel: a
    subscriber whose next safety-net read is a minute away applies each within
    seconds."""
    sink = _started(buses(check_interval=60.0))
    buses().publish([SessionRevoked("published")])
    wait_until(lambda: sink.events == [SessionRevoked("published")], "publish's NOTIFY", 5.0)
    sessions = Sessions(backend=store_url, bus=bus_url)
    store = sessions.store
    assert isinstance(store, SQLBackend)
    request.addfinalizer(store.close)
    sessions.create_schema()
    assert sessions._same_transaction(store) is not None
    login = sessions.create("u-1")
    assert sessions.revoke(login.session_id) is True
    wait_until(lambda: len(sink.events) == 2, "the revoke's pg_notify", 5.0)
    assert sink.events[1] == SessionRevoked(login.session_id)


def test_a_batch_is_published_whole_or_not_at_all(
    buses: Callable[..., PostgresBus], sql: psycopg.Connection[Any], table: str
) -> None:
    bus = buses()
    bus.ensure_schema()
    sql.execute(f"ALTER TABLE {table} ADD CONSTRAINT no_flush CHECK (type <> 'flush')")
    with pytest.raises(BusUnavailable):
        bus.publish([SessionRevoked("a"), SessionRevoked("b"), Flush()])
    assert sql.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)  # noqa: S608
    bus.publish([SessionRevoked("a"), SessionRevoked("b")])
    assert sql.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)  # noqa: S608
    down = PostgresBus("postgresql://postgres@127.0.0.1:1/test", timeout=0.5)
    with pytest.raises(BusUnavailable):
        down.publish([SessionRevoked("a")])


def test_a_row_inserted_while_disconnected_is_applied_after_reconnecting(
    buses: Callable[..., PostgresBus], sql: psycopg.Connection[Any], table: str
) -> None:
    """pg_terminate_backend on the LISTEN connection; a row (and its NOTIFY, lost)
    arrives before the subscriber is allowed to reconnect; it is read on reconnect."""
    hold = threading.Event()

    def wait(stop: threading.Event, seconds: float) -> bool:
        hold.wait(DEADLINE)  # the reconnect waits for the test
        return stop.is_set()

    bus = buses(wait=wait)
    sink = _started(bus)
    name = f"sessionmw-bus {os.getpid()} {table}"
    rows = sql.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
    ).fetchall()
    assert len(rows) == 1, rows
    sql.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
    wait_until(lambda: not bus.connected, "the subscriber notices the terminated connection")
    _insert(sql, table, session_id="s2")
    assert sink.events == []
    hold.set()
    wait_until(lambda: sink.events == [SessionRevoked("s2")], "the row is read after reconnecting")
    assert bus.connected
    assert bus.stats()["reconnects"] == 1
    assert sink.connects == 2
    assert sink.gaps == []


def test_concurrent_transactions_committing_out_of_id_order_are_both_applied(
    buses: Callable[..., PostgresBus], postgres_url: str, sql: psycopg.Connection[Any], table: str
) -> None:
    """Id 2 commits before id 1: the subscriber reads 2, keeps 1 as a hole, and reads
    it when it commits. A hole whose insert rolls back closes without a flush."""
    bus = buses(hole_grace=0.1)
    sink = _started(bus)
    _insert(sql, table, session_id="s0")  # rows below the holes: no gap possible
    wait_until(lambda: len(sink.events) == 1, "the first row")
    with psycopg.connect(postgres_url) as slow:
        slow.execute(f"INSERT INTO {table} (created_at, type, session_id) VALUES (%s, %s, %s)",  # noqa: S608
                     (time.time(), "session_revoked", "s1"))  # fmt: skip
        _insert(sql, table, session_id="s2")
        wait_until(lambda: len(sink.events) == 2, "the later row")
        assert bus.stats()["holes"] == 1
        slow.execute(f"NOTIFY {table}")
        slow.commit()
    wait_until(lambda: len(sink.events) == 3, "the earlier row, committed last")
    assert sink.events[1:] == [SessionRevoked("s2"), SessionRevoked("s1")]
    with psycopg.connect(postgres_url) as failed:
        failed.execute(f"INSERT INTO {table} (created_at, type, session_id) VALUES (%s, %s, %s)",  # noqa: S608
                       (time.time(), "session_revoked", "never"))  # fmt: skip
        _insert(sql, table, session_id="s3")
        wait_until(lambda: len(sink.events) == 4, "the row after the doomed one")
        failed.rollback()
    wait_until(lambda: bus.stats()["holes"] == 0, "the rolled-back hole is closed")
    assert sink.gaps == []
    assert SessionRevoked("never") not in sink.events


def _child(bus: PostgresBus) -> None:
    """In a forked child: subscribe and publish on the parent's bus object."""
    sink = Sink()
    bus.start(sink)
    deadline = time.monotonic() + DEADLINE
    while not bus.connected and time.monotonic() < deadline:
        time.sleep(0.01)  # polling
    bus.publish([SessionRevoked("from-child")])
    while SessionRevoked("from-child") not in sink.events and time.monotonic() < deadline:
        time.sleep(0.01)  # polling
    bus.stop()
    gc.collect()  # what the child dropped is finalised now: it must not be the parent's
    os._exit(0 if SessionRevoked("from-child") in sink.events else 1)


def test_a_forked_child_starts_its_own_subscriber_and_leaves_the_parents_connections(
    buses: Callable[..., PostgresBus],
) -> None:
    bus = buses()
    sink = _started(bus)
    pid = bus.run(lambda conn: conn.info.backend_pid)  # a pooled producer connection
    child = multiprocessing.get_context("fork").Process(target=_child, args=(bus,))
    child.start()
    child.join(DEADLINE + 5)
    assert child.exitcode == 0
    wait_until(lambda: SessionRevoked("from-child") in sink.events, "the parent reads it too")
    assert bus.connected
    assert bus.run(lambda conn: conn.info.backend_pid) == pid  # not closed by the child


# -- retention and gaps ------------------------------------------------------------------


def test_retention_deletes_old_rows_and_expired_claims(
    buses: Callable[..., PostgresBus], sql: psycopg.Connection[Any], table: str
) -> None:
    real = time.time()
    now = [real - 7200]  # the bus's clock: two hours behind at first, so nothing is old
    bus = buses(retention=60, retention_interval=0.2, clock=lambda: now[0])
    assert PostgresBus("postgresql://h/db").retention_interval <= 10  # within retention + 10 s
    bus.replay_guard.clock = lambda: now[0]
    bus.replay_guard.window = 7300  # expires 100 s after the real now
    sink = _started(bus)
    old = [_insert(sql, table, created_at=real - 3600, session_id=f"o{i}") for i in range(3)]
    fresh = _insert(sql, table, created_at=real - 30, session_id="f")
    assert bus.replay_guard.claim("hook-1")
    wait_until(lambda: len(sink.events) == 4, "the rows are read")
    count = f"SELECT count(*) FROM {table}_replay"  # noqa: S608

    def ids() -> list[int]:
        return [r[0] for r in sql.execute(f"SELECT id FROM {table} ORDER BY id")]  # noqa: S608

    assert ids() == [*old, fresh]
    assert sql.execute(count).fetchone() == (1,)
    now[0] = real  # the first three rows are past the retention now
    wait_until(lambda: ids() == [fresh], "rows older than the retention deleted")
    assert sql.execute(count).fetchone() == (1,)
    now[0] = real + 601  # the fresh row and the claim are old now
    wait_until(lambda: ids() == [], "the last row deleted once it is past the retention")
    wait_until(lambda: sql.execute(count).fetchone() == (0,), "the expired claim deleted")
    assert sink.gaps == []  # deleting rows already read is no gap


def _applied(gate: Gate) -> int:
    return gate.events_applied.get("session_revoked", 0)


def _cached_gate(bus_url: str, **knobs: Any) -> Gate:
    now = time.time()
    backend = MemoryBackend([SessionRecord("s-ok", "u", SessionStatus.ACTIVE, now + 3600, now)])
    gate = Gate(Settings(backend=backend, bus=bus_url))
    for name, value in knobs.items():
        setattr(gate.bus, name, value)
    gate.start()
    wait_until(lambda: gate.bus.connected, "the gate's subscriber connects")
    assert gate.check("s-ok") == backend.lookup("s-ok")
    assert gate.cache.peek("s-ok") is not MISS
    return gate


def test_rows_deleted_past_the_cursor_flush_the_cache(
    bus_url: str, sql: psycopg.Connection[Any], table: str
) -> None:
    """Rows inserted without NOTIFY (not read yet) and deleted, with every older row:
    the next row read shows a missing id below every kept row, and the gate flushes."""
    gate = _cached_gate(bus_url, check_interval=60.0, hole_grace=0.1)
    try:
        _insert(sql, table, session_id="seen")
        wait_until(lambda: _applied(gate) == 1, "the first row is read")
        assert gate.cache.peek("s-ok") is not MISS
        lost = _insert(sql, table, notify=False, session_id="lost")
        sql.execute(f"DELETE FROM {table} WHERE id <= %s", (lost,))  # noqa: S608
        with capture_logs() as logs:
            _insert(sql, table, session_id="after")
            wait_until(lambda: gate.cache.peek("s-ok") is MISS, "the cache flushed")
        gaps = [line for line in logs if line["event"] == "bus.gap_detected"]
        assert gaps
        assert gaps[0]["reason"] == "deleted"
        assert gaps[0]["table"] == table
    finally:
        gate.stop()


def test_a_gap_while_stopped_is_found_on_connecting(
    bus_url: str, sql: psycopg.Connection[Any], table: str
) -> None:
    gate = _cached_gate(bus_url)
    try:
        _insert(sql, table, session_id="seen")
        wait_until(lambda: _applied(gate) == 1, "the first row is read")
        gate.stop()
        last = _insert(sql, table, session_id="missed")
        _insert(sql, table, session_id="kept")
        sql.execute(f"DELETE FROM {table} WHERE id <= %s", (last,))  # noqa: S608
        with capture_logs() as logs:
            gate.start()
            wait_until(lambda: gate.bus.connected, "reconnected")
        assert [line["reason"] for line in logs if line["event"] == "bus.gap_detected"] == [
            "deleted"
        ]
        assert gate.cache.peek("s-ok") is MISS  # flushed
        assert _applied(gate) == 2  # and the row still there was read
        # The table dropped and made again is a gap too.
        gate.stop()
        sql.execute(f"DROP TABLE {table}")
        with capture_logs() as logs:
            gate.start()
            wait_until(lambda: gate.bus.connected, "reconnected to the new table")
        assert [line["reason"] for line in logs if line["event"] == "bus.gap_detected"] == [
            "table_recreated"
        ]
    finally:
        gate.stop()


# -- replay guard ------------------------------------------------------------------------


def test_replay_guard_across_buses_release_and_expiry(
    buses: Callable[..., PostgresBus], sql: psycopg.Connection[Any], table: str
) -> None:
    first, second = buses(), buses()
    now = [1_000_000.0]
    for bus in (first, second):
        bus.replay_guard.clock = lambda: now[0]
    assert first.replay_guard.claim("msg_1")
    assert not second.replay_guard.claim("msg_1")  # a retry on another worker
    assert second.replay_guard.claim("msg_2")
    first.replay_guard.release("msg_1")
    assert second.replay_guard.claim("msg_1")  # released: the retry is applied
    now[0] += 601
    assert first.replay_guard.claim("msg_1")  # expired: claimable again
    assert not second.replay_guard.claim("msg_1")
    stored = sql.execute(f"SELECT digest FROM {table}_replay ORDER BY digest").fetchall()  # noqa: S608
    assert sorted(bytes(r[0]) for r in stored) == sorted([digest("msg_1"), digest("msg_2")])
    assert all(b"msg" not in bytes(r[0]) for r in stored)
    down = PostgresBus("postgresql://postgres@127.0.0.1:1/test", timeout=0.5)
    with pytest.raises(BusUnavailable):
        down.replay_guard.claim("msg_3")
    down.replay_guard.release("msg_3")  # never raises


async def test_replay_guard_async(buses: Callable[..., PostgresBus]) -> None:
    first, second = buses(), buses()
    assert await first.replay_guard.aclaim("amsg")
    assert not await second.replay_guard.aclaim("amsg")
    await first.replay_guard.arelease("amsg")
    assert await second.replay_guard.aclaim("amsg")


async def test_the_hook_on_two_workers_applies_a_delivery_once(
    bus_url: str, sql: psycopg.Connection[Any], table: str
) -> None:
    """Two gates (two workers) on one PostgreSQL bus: the same ``webhook-id`` is a
    duplicate on the other; a failed publish releases the ID for the retry."""
    secret = new_secret()
    settings = Settings(bus=bus_url, invalidation_secret=secret)
    first, second = Gate(settings), Gate(settings)
    try:
        assert first.hook is not None
        assert second.hook is not None
        events = [{"type": "session_revoked", "session_id": "hooked"}]
        headers, body = signed_request(secret, events, msg_id="msg_pg_1")
        answer = first.hook.handle(headers, body)
        assert (answer.status, json.loads(answer.body)) == (200, {"applied": 1})
        answer = await second.hook.ahandle(headers, body)
        assert json.loads(answer.body) == {"applied": 0, "duplicate": True}
        query = f"SELECT type, session_id FROM {table}"  # noqa: S608
        assert sql.execute(query).fetchall() == [("session_revoked", "hooked")]
        # The publish fails (a constraint refuses the row): 503, and the ID is free again.
        sql.execute(f"ALTER TABLE {table} ADD CONSTRAINT refuse CHECK (session_id <> 'no')")
        retry = [{"type": "session_revoked", "session_id": "no"}]
        headers, body = signed_request(secret, retry, msg_id="msg_pg_2")
        answer = await first.hook.ahandle(headers, body)
        assert (answer.status, json.loads(answer.body)) == (503, {"error": "bus_unavailable"})
        sql.execute(f"ALTER TABLE {table} DROP CONSTRAINT refuse")
        answer = second.hook.handle(headers, body)
        assert (answer.status, json.loads(answer.body)) == (200, {"applied": 1})
    finally:
        first.stop()
        second.stop()


async def test_async_publish_does_not_block_the_loop(
    buses: Callable[..., PostgresBus], postgres_url: str, table: str
) -> None:
    """While the table is locked by another transaction, apublish waits; a ticker
    task on the same loop keeps running meanwhile."""
    bus = buses(timeout=5.0)
    bus.ensure_schema()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass"

    def publish_waits(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(waiting, (table,)).fetchone()
        return row is not None and row[0] > 0

    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    with (
        psycopg.connect(postgres_url) as locker,
        psycopg.connect(postgres_url, autocommit=True) as watcher,
    ):
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        tick = asyncio.create_task(ticker())
        publishing = asyncio.create_task(bus.apublish([SessionRevoked("a")]))
        # Polling: until the publish is queued behind the lock (pg_locks says so)...
        while not await asyncio.to_thread(publish_waits, watcher):
            assert loop.time() < deadline, "the publish never reached the lock"
        # ...and then until the ticker has run 10 more times while it still waits.
        start = ticks
        while ticks < start + 10:
            assert loop.time() < deadline, "the loop was blocked"
            await asyncio.sleep(0.01)  # polling the ticker
        assert not publishing.done()  # really waiting on the lock
        locker.commit()
        await asyncio.wait_for(publishing, DEADLINE)
        tick.cancel()
    query = f"SELECT count(*) FROM {table}"  # noqa: S608
    count = await asyncio.to_thread(bus.run, lambda c: c.execute(query).fetchone())
    assert count == (1,)


# -- one transaction with a SQL store ----------------------------------------------------


@pytest.fixture
def store_url(postgres_url: str) -> Iterator[str]:
    table = f"t_sessions_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url.replace('postgresql://', 'postgresql+psycopg://')}?table={table}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_revoke_writes_status_and_event_in_one_transaction(
    request: pytest.FixtureRequest,
    store_url: str,
    bus_url: str,
    buses: Callable[..., PostgresBus],
    sql: psycopg.Connection[Any],
    table: str,
) -> None:
    sessions = Sessions(backend=store_url, bus=bus_url)
    store = sessions.store
    assert isinstance(store, SQLBackend)
    request.addfinalizer(store.close)  # the store's engine and its connections
    sessions.create_schema()
    watcher = _started(buses())
    one = sessions.create("u-1", idp_sid="idp-1")
    two = sessions.create("u-1")
    three = sessions.create("u-1", idp_sid="idp-1")
    assert sessions._same_transaction(sessions.store) is not None

    def events() -> list[tuple[Any, ...]]:
        query = f"SELECT type, session_id, user_id FROM {table} ORDER BY id"  # noqa: S608
        return [tuple(r) for r in sql.execute(query)]

    # A failing event insert rolls the status change back: neither is written.
    refuse = f"CHECK (session_id IS DISTINCT FROM '{one.session_id}')"
    sql.execute(f"ALTER TABLE {table} ADD CONSTRAINT refuse {refuse}")
    with pytest.raises(BusUnavailable):
        sessions.revoke(one.session_id)
    stored = sessions.get(one.session_id)
    assert stored is not None
    assert stored.status is SessionStatus.ACTIVE
    assert events() == []
    with pytest.raises(BusUnavailable):
        sessions.revoke_idp_sid("idp-1")
    assert sessions.get(three.session_id).status is SessionStatus.ACTIVE  # type: ignore[union-attr]
    sql.execute(f"ALTER TABLE {table} DROP CONSTRAINT refuse")

    assert sessions.revoke(one.session_id) is True
    assert sessions.get(one.session_id).status is SessionStatus.REVOKED  # type: ignore[union-attr]
    assert events() == [("session_revoked", one.session_id, None)]
    assert sessions.revoke(one.session_id) is False  # idempotent: the event again
    assert sessions.revoke_idp_sid("idp-1") == 1
    assert sessions.revoke_user("u-1") == 1
    assert events()[2:] == [
        ("session_revoked", three.session_id, None),
        ("session_revoked", two.session_id, None),
        ("user_sessions_revoked", None, "u-1"),
    ]
    assert sessions.list("u-1") == []
    # This process applied them at once; another subscriber read them from the table.
    assert sessions.gate.cache.lookup(two.session_id).status is SessionStatus.REVOKED  # type: ignore[union-attr]
    wait_until(lambda: len(watcher.events) == 5, "a subscriber reads the five events")
    assert SessionRevoked(two.session_id) in watcher.events


def test_revoke_on_another_database_is_two_steps(
    tmp_path: Path, bus_url: str, sql: psycopg.Connection[Any], table: str
) -> None:
    sessions = Sessions(backend=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)
    sessions.create_schema()
    assert sessions._same_transaction(sessions.store) is None
    login = sessions.create("u-9")
    assert sessions.revoke(login.session_id) is True
    rows = sql.execute(f"SELECT type, session_id FROM {table}").fetchall()  # noqa: S608
    assert rows == [("session_revoked", login.session_id)]


def test_cli_revoke_on_the_postgres_bus(
    bus_url: str, buses: Callable[..., PostgresBus], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = _started(buses())
    assert cli_main(["revoke", "--session", "cli-1", "--bus", bus_url]) == 0
    out = capsys.readouterr().out
    assert '"event": "session_revoked"' in out
    wait_until(lambda: sink.events == [SessionRevoked("cli-1")], "the CLI's event is read")
    assert publish(bus_url, [Flush()], stream="unused")  # the script helper returns row ids


# -- real servers ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "app"),
    [("uvicorn", "examples.starlette_app:app"), ("gunicorn", "examples.flask_app:app")],
)
def test_a_psql_revocation_reaches_every_worker(
    kind: str, app: str, tmp_path: Path, bus_url: str, postgres_url: str, table: str
) -> None:
    workers = 2
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    seed_store(store)
    setup = PostgresBus(bus_url)
    setup.ensure_schema()
    setup.stop()
    port = free_port()
    log = tmp_path / "access.log"
    option = "--workers" if kind == "uvicorn" else "-w"
    argv = access_logged(kind, app, port, log, option, str(workers))
    env = clean_env({"SESSIONMW_BACKEND": store, "SESSIONMW_BUS": bus_url})
    numbers = itertools.count(1)
    http = httpx.Client(timeout=10)

    def answers(count: int = 8) -> dict[int, int]:
        sent = [next(numbers) for _ in range(count)]

        def get(n: int) -> int:
            response = http.get(
                f"{base}/whoami?n={n}", headers={HEADER: VALID, "connection": "close"}
            )
            return response.status_code

        with ThreadPoolExecutor(4) as pool:
            return dict(zip(sent, pool.map(get, sent), strict=True))

    def every_worker(status: int) -> None:
        seen: set[int] = set()
        pending: dict[int, int] = {}
        deadline = time.monotonic() + DEADLINE
        while len(seen) < workers:
            if time.monotonic() > deadline:
                pytest.fail(f"workers answering {status}: {seen}")
            pending.update(answers())
            served = served_by(kind, log)
            for n in [n for n in pending if n in served]:
                if pending.pop(n) == status:
                    seen.add(served[n])

    with running(argv, env, port=port) as base:
        every_worker(200)  # cached as active in every worker
        _psql(postgres_url, table, VALID)
        every_worker(401)
        assert set(answers(16).values()) == {401}  # once applied, refused everywhere
    http.close()
