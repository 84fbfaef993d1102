"""SQLBackend against a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus
from sessionmw._log import BACKEND_MALFORMED, hash_id
from sessionmw.backends import backend_from_url
from sessionmw.backends.sql import SQLBackend
from tests.conftest import free_port

SID = "sid+Raw/ID='x'--;"
NOW = time.time()


def _make(url: str, timeout: float = 2.0, engine: sa.Engine | None = None) -> SQLBackend:
    backend = backend_from_url(url, timeout=timeout, client=engine)
    assert isinstance(backend, SQLBackend)
    return backend


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sessions.db'}"


@pytest.fixture
def pg_table_url(postgres_url: str) -> Iterator[str]:
    url = f"{postgres_url}?table=t_{uuid.uuid4().hex[:16]}"
    yield url
    cleanup = _make(url)
    cleanup.drop_schema()
    cleanup.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_table_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def backend(store_url: str) -> Iterator[SQLBackend]:
    backend = _make(store_url)
    backend.create_schema()
    yield backend
    backend.close()


def _insert_raw(backend: SQLBackend, session_id: str, **columns: Any) -> None:
    row = {"user_id": "u1", "status": "active", "expires_at": None, "issued_at": None}
    row.update(columns)
    row.setdefault("data", None)
    table = backend.table_name
    with backend.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {table} (session_id, user_id, status, expires_at, issued_at, data)"  # noqa: S608
                " VALUES (:sid, :user_id, :status, :expires_at, :issued_at, :data)"
            ),
            {"sid": session_id, **row},
        )


def _no_raw_id(logs: Sequence[Mapping[str, Any]], session_id: str = SID) -> None:
    assert session_id not in repr(logs)


# -- lookups ---------------------------------------------------------------------


async def test_found_with_every_field(backend: SQLBackend) -> None:
    record = SessionRecord(
        SID, "user-1", SessionStatus.ACTIVE, NOW + 60, NOW - 60, {"role": "admin", "n": 1}
    )
    backend.put(record)
    assert backend.lookup(SID) == record
    assert await backend.alookup(SID) == record
    got = backend.lookup(SID)
    assert got is not None
    assert dict(got.data) == {"role": "admin", "n": 1}


async def test_revoked_and_expired_are_returned_as_stored(backend: SQLBackend) -> None:
    _insert_raw(backend, "rev", status="revoked", issued_at=NOW - 10)
    _insert_raw(backend, "old", expires_at=NOW - 1)
    revoked = await backend.alookup("rev")
    assert revoked is not None
    assert revoked.status is SessionStatus.REVOKED
    assert revoked.issued_at == pytest.approx(NOW - 10)
    old = backend.lookup("old")
    assert old is not None
    assert old.active
    assert old.expired(time.time())


async def test_data_as_json_text(backend: SQLBackend) -> None:
    _insert_raw(backend, "d", data=json.dumps({"scopes": ["a", "b"]}))
    _insert_raw(backend, "e", data="")
    got = await backend.alookup("d")
    assert got is not None
    assert dict(got.data) == {"scopes": ["a", "b"]}
    empty = backend.lookup("e")
    assert empty is not None
    assert dict(empty.data) == {}


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"status": "ACTIVE"}, "status"),
        ({"status": "deleted"}, "status"),
        ({"user_id": ""}, "user_id"),
        ({"data": "{broken"}, "data"),
        ({"data": "[1, 2]"}, "data"),
        ({"data": '"a string"'}, "data"),
        ({"expires_at": float("inf")}, "expires_at"),
        ({"expires_at": 1767225600000.0}, "expires_at is after 3000-01-01"),
        ({"issued_at": 32503680000.5}, "issued_at is after 3000-01-01"),
    ],
)
async def test_malformed_rows_are_unknown_and_logged(
    backend: SQLBackend, columns: dict[str, Any], problem: str
) -> None:
    _insert_raw(backend, SID, **columns)
    with capture_logs() as logs:
        assert backend.lookup(SID) is None
        assert await backend.alookup(SID) is None
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED] * 2
    assert all(entry["session"] == hash_id(SID) for entry in logs)
    assert problem in logs[0]["problem"]
    _no_raw_id(logs)


def test_sqlite_text_in_a_real_column_is_malformed(sqlite_url: str) -> None:
    backend = _make(sqlite_url)
    backend.create_schema()
    _insert_raw(backend, SID, expires_at="tomorrow")
    with capture_logs() as logs:
        assert backend.lookup(SID) is None
    assert logs[0]["problem"] == "expires_at is not a number"
    _no_raw_id(logs)
    backend.close()


async def test_missing_table_is_unavailable_without_leaking_the_id(store_url: str) -> None:
    backend = _make(store_url)
    with pytest.raises(BackendUnavailable) as info:
        backend.lookup(SID)
    assert SID not in str(info.value)
    with pytest.raises(BackendUnavailable) as ainfo:
        await backend.alookup(SID)
    assert SID not in str(ainfo.value)
    backend.close()


def test_table_override_is_used(tmp_path: Path) -> None:
    path = tmp_path / "multi.db"
    one = _make(f"sqlite:///{path}?table=first")
    two = _make(f"sqlite:///{path}")
    one.create_schema()
    two.create_schema()
    one.put(SessionRecord("s", "u-first", SessionStatus.ACTIVE))
    assert two.lookup("s") is None
    got = one.lookup("s")
    assert got is not None
    assert got.user_id == "u-first"
    assert set(sa.inspect(one.engine).get_table_names()) == {"first", "device_sessions"}
    one.close()
    two.close()


def test_given_engine_is_used(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'given.db'}")
    # The URL points somewhere unusable: only the engine can make this work.
    backend = _make("sqlite:////nonexistent-dir/x.db?table=given", engine=engine)
    backend.create_schema()
    backend.put(SessionRecord("s", "u", SessionStatus.ACTIVE))
    assert backend.lookup("s") is not None
    backend.close()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM given")).scalar_one() == 1
    engine.dispose()


async def test_alookup_runs_in_a_worker_thread(sqlite_url: str) -> None:
    backend = _make(sqlite_url)
    backend.create_schema()
    backend.put(SessionRecord("s", "u", SessionStatus.ACTIVE))
    threads: list[int] = []

    @sa.event.listens_for(backend.engine, "before_cursor_execute")
    def record_thread(*args: Any) -> None:
        threads.append(threading.get_ident())

    assert await backend.alookup("s") is not None
    assert threads
    assert threading.get_ident() not in threads
    backend.close()


def test_fork_child_builds_its_own_engine(sqlite_url: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    backend = _make(sqlite_url)
    backend.create_schema()
    backend.put(SessionRecord("s", "u", SessionStatus.ACTIVE))
    parent_engine = backend.engine
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            record = backend.lookup("s")
            fresh = backend.engine is not parent_engine
            os.write(write_fd, f"{record is not None and fresh}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True"
    assert backend.lookup("s") is not None
    assert backend.engine is parent_engine
    backend.close()


# -- management API --------------------------------------------------------------


def test_management_api(backend: SQLBackend) -> None:
    backend.create_schema()  # idempotent
    a = SessionRecord("a", "alice", SessionStatus.ACTIVE, NOW + 100, NOW, {"k": "v"})
    b = SessionRecord("b", "bob", SessionStatus.ACTIVE)
    c = SessionRecord("c", "alice", SessionStatus.REVOKED)
    for record in (c, b, a):
        backend.put(record)
    assert backend.list_sessions() == [a, b, c]
    assert backend.list_sessions(user_id="alice") == [a, c]
    assert backend.list_sessions(limit=1) == [a]
    assert backend.list_sessions(user_id="nobody") == []

    replaced = SessionRecord("a", "alice", SessionStatus.ACTIVE)
    backend.put(replaced)  # upsert drops fields the new record lacks
    assert backend.lookup("a") == replaced

    assert backend.set_status("b", SessionStatus.REVOKED) is True
    got = backend.lookup("b")
    assert got is not None
    assert got.status is SessionStatus.REVOKED
    assert backend.set_status("b", "active") is True
    assert backend.set_status("missing", "revoked") is False
    with pytest.raises(ValueError, match="bogus"):
        backend.set_status("b", "bogus")

    backend.delete("b")
    backend.delete("b")
    assert backend.lookup("b") is None
    assert [r.session_id for r in backend.list_sessions()] == ["a", "c"]


def test_schema_missing_and_create_schema_say_what_they_do(store_url: str) -> None:
    """``schema_missing`` names what ``create_schema`` would create, without creating
    it; ``create_schema`` creates it and says so; a second run has nothing to do."""
    backend = _make(store_url)
    table = backend.table_name
    assert backend.schema_missing() == [f"table {table}"]
    assert backend.schema_missing() == [f"table {table}"], "asking creates nothing"
    assert backend.create_schema() == [f"created table {table}"]
    assert backend.schema_missing() == []
    assert backend.create_schema() == []
    backend.put(SessionRecord("s", "u", SessionStatus.ACTIVE))
    assert backend.lookup("s") is not None
    backend.close()


def test_list_sessions_skips_malformed_rows(backend: SQLBackend) -> None:
    backend.put(SessionRecord("good", "u1", SessionStatus.ACTIVE))
    _insert_raw(backend, SID, status="weird")
    with capture_logs() as logs:
        assert [r.session_id for r in backend.list_sessions()] == ["good"]
    assert logs[0]["event"] == BACKEND_MALFORMED
    _no_raw_id(logs)


# -- PostgreSQL failures and timeouts --------------------------------------------


async def test_unreachable_postgres_is_unavailable_quickly() -> None:
    backend = _make(f"postgresql://postgres@127.0.0.1:{free_port()}/test", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        backend.lookup(SID)
    with pytest.raises(BackendUnavailable):
        await backend.alookup(SID)
    assert time.monotonic() - started < 2.0
    assert SID not in str(info.value)
    assert "Connection refused" in str(info.value) or "connect" in str(info.value)
    backend.close()


@pytest.fixture
async def locked_pg(
    pg_table_url: str,
) -> AsyncIterator[tuple[SQLBackend, psycopg.Connection[Any], str]]:
    """A PostgreSQL backend whose table another connection holds an exclusive lock on."""
    backend = _make(pg_table_url, timeout=0.5)
    backend.create_schema()
    backend.put(SessionRecord("s", "u", SessionStatus.ACTIVE))
    url = backend.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    blocker = psycopg.connect(url)
    blocker.execute(f"LOCK TABLE {backend.table_name} IN ACCESS EXCLUSIVE MODE")
    yield backend, blocker, pg_table_url
    blocker.rollback()
    blocker.close()
    backend.close()


def test_sync_lookup_honours_statement_timeout(
    locked_pg: tuple[SQLBackend, psycopg.Connection[Any], str],
) -> None:
    backend, _, _ = locked_pg
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="statement timeout"):
        backend.lookup("s")
    assert time.monotonic() - started < 1.5


async def test_async_lookup_times_out_without_blocking_the_loop(
    locked_pg: tuple[SQLBackend, psycopg.Connection[Any], str],
) -> None:
    backend, _, _ = locked_pg
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await backend.alookup("s")
    elapsed = time.monotonic() - started
    task.cancel()
    assert elapsed < 1.5
    assert ticks >= 10  # the loop kept running while the query waited on the lock


async def test_async_lookup_waits_for_the_lock_then_answers(
    locked_pg: tuple[SQLBackend, psycopg.Connection[Any], str],
) -> None:
    backend, blocker, url = locked_pg
    slow = _make(url, timeout=10.0)
    lookup = asyncio.create_task(slow.alookup("s"))
    # Wait (without sleeping a fixed time) until the lookup is queued behind the lock.
    watcher = psycopg.connect(blocker.info.dsn, autocommit=True)
    try:
        for _ in range(1000):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE %s",
                (f"%{backend.table_name}%",),
            ).fetchone()
            if waiting is not None and waiting[0] >= 1:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the lookup never waited on the lock")
        assert not lookup.done()
        blocker.rollback()  # release the lock
        record = await lookup
    finally:
        watcher.close()
        slow.close()
    assert record is not None
    assert record.user_id == "u"
