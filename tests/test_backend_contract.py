"""The backend contract of SPEC section 6, run over every store the way
``tests/spec_cases.py`` runs section 7 over every adapter.

Each store is real: an in-process dict (``memory://``, where a case applies to it),
a SQLite file, PostgreSQL, Redis, and an HTTP auth service stand-in (a threading
``http.server`` on loopback). Rows are written in each store's documented layout
(raw columns, hash fields, JSON bodies), so the same malformed row reaches every
store's reader. Every lookup is made on both paths, ``lookup`` and ``alookup``.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus
from sessionmw._log import BACKEND_MALFORMED, hash_id
from sessionmw.backends import Backend, MemoryBackend, backend_from_url
from sessionmw.backends.redis import session_key
from sessionmw.backends.sql import SQLBackend
from sessionmw.records import build_record
from tests.conftest import free_port
from tests.servers import LocalServer, QuietHandler

#: Characters a store or a driver might quote, escape or echo back.
SID = "sid+Raw/ID='x'=="
NOW = time.time()
#: The backend timeout of the failure cases.
TIMEOUT = 0.3
#: Every failure must surface within this long (the slowest store: libpq counts
#: its connect timeout in whole seconds, at least 2).
BOUND = 3.5

Fields = Mapping[str, Any]


# -- an HTTP auth service stand-in ---------------------------------------------------


@dataclass
class AuthService:
    """Answers ``GET /sessions/{quoted id}`` from ``answers``; 404 otherwise."""

    prefix: str = "/sessions/"
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    def handler(self) -> type[QuietHandler]:
        service = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                service.paths.append(self.path)
                session_id = unquote(self.path[len(service.prefix) :])
                self.send_json(*service.answers.get(session_id, (404, b"{}")))

        return Handler


@contextmanager
def auth_service() -> Iterator[tuple[AuthService, str]]:
    service = AuthService()
    with LocalServer(service.handler()) as server:
        yield service, server.base_url + "/sessions/{session_id}"


@contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (in the kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


# -- one harness per store -----------------------------------------------------------


class Harness:
    """A store under test: its backend, a way to write raw rows, and backends of the
    same kind that are refused or stalled."""

    name: str
    backend: Backend

    def put_raw(self, session_id: str, fields: Fields) -> None:
        raise NotImplementedError

    def refused(self) -> Backend:
        """A backend of this kind whose store refuses the connection."""
        raise NotImplementedError

    def stalled(self) -> AbstractContextManager[Backend]:
        """A backend (timeout :data:`TIMEOUT`) whose store accepts and never answers."""
        raise NotImplementedError


def _json_data(fields: Fields) -> dict[str, Any]:
    """The fields as a row holds them: ``data`` as JSON text."""
    row = dict(fields)
    if isinstance(row.get("data"), dict):
        row["data"] = json.dumps(row["data"])
    return row


async def aclose(backend: Backend) -> None:
    closer = getattr(backend, "aclose", None)
    if closer is not None:
        await closer()
    elif hasattr(backend, "close"):
        backend.close()


class MemoryHarness(Harness):
    name = "memory"

    def __init__(self) -> None:
        self.store = MemoryBackend()
        self.backend = self.store

    def put_raw(self, session_id: str, fields: Fields) -> None:
        self.store.put(build_record(session_id, fields))


class SQLiteHarness(Harness):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "contract.db"
        self.store = SQLBackend(f"sqlite:///{self.path}")
        self.store.create_schema()
        self.backend = self.store

    def put_raw(self, session_id: str, fields: Fields) -> None:
        row = {"user_id": "u", "status": "active", "expires_at": None, "issued_at": None}
        row.update(_json_data(fields))
        row.setdefault("data", None)
        # Raw SQL: SQLAlchemy's column types would refuse the malformed values.
        insert = sa.text(
            f"INSERT INTO {self.store.table_name}"  # noqa: S608 - a generated identifier
            " (session_id, user_id, status, expires_at, issued_at, data)"
            " VALUES (:sid, :user_id, :status, :expires_at, :issued_at, :data)"
        )
        with self.store.engine.begin() as conn:
            conn.execute(insert, {"sid": session_id, **row})

    def refused(self) -> Backend:
        return backend_from_url("sqlite:////nonexistent-dir/sessionmw/x.db", timeout=TIMEOUT)

    @contextmanager
    def stalled(self) -> Iterator[Backend]:
        """Another connection holds an exclusive lock on the database file."""
        self.put_raw("s", {})
        blocker = sqlite3.connect(self.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield backend_from_url(f"sqlite:///{self.path}", timeout=TIMEOUT)
        finally:
            blocker.rollback()
            blocker.close()


class PostgresHarness(SQLiteHarness):
    name = "postgres"

    def __init__(self, postgres_url: str) -> None:
        self.url = f"{postgres_url}?table=c_{uuid.uuid4().hex[:16]}"
        self.store = SQLBackend(self.url)
        self.store.create_schema()
        self.backend = self.store

    def put_raw(self, session_id: str, fields: Fields) -> None:
        # PostgreSQL checks column types: a time no number can be is stored as NaN,
        # the one non-number a DOUBLE PRECISION column holds.
        adapted = dict(fields)
        for key in ("expires_at", "issued_at"):
            if isinstance(adapted.get(key), str):
                adapted[key] = float("nan")
        super().put_raw(session_id, adapted)

    def refused(self) -> Backend:
        return backend_from_url(
            f"postgresql://postgres@127.0.0.1:{free_port()}/test", timeout=TIMEOUT
        )

    @contextmanager
    def stalled(self) -> Iterator[Backend]:
        with silent_port() as port:
            yield backend_from_url(f"postgresql://postgres@127.0.0.1:{port}/t", timeout=TIMEOUT)

    def drop(self) -> None:
        self.store.drop_schema()


class RedisHarness(Harness):
    name = "redis"

    def __init__(self, redis_url: str, client: Any) -> None:
        self.client = client
        self.backend = backend_from_url(redis_url)

    def put_raw(self, session_id: str, fields: Fields) -> None:
        mapping = {k: str(v) for k, v in _json_data(fields).items() if v is not None}
        self.client.hset(session_key(session_id), mapping=mapping)

    def refused(self) -> Backend:
        return backend_from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=TIMEOUT)

    @contextmanager
    def stalled(self) -> Iterator[Backend]:
        with silent_port() as port:
            yield backend_from_url(f"redis://127.0.0.1:{port}/0", timeout=TIMEOUT)


class HTTPHarness(Harness):
    name = "http"

    def __init__(self, service: AuthService, url: str) -> None:
        self.service = service
        self.backend = backend_from_url(url)

    def put_raw(self, session_id: str, fields: Fields) -> None:
        body = json.dumps({"session_id": session_id, **fields}).encode()
        self.service.answers[session_id] = (200, body)

    def refused(self) -> Backend:
        url = f"http://127.0.0.1:{free_port()}/sessions/{{session_id}}"
        return backend_from_url(url, timeout=TIMEOUT)

    @contextmanager
    def stalled(self) -> Iterator[Backend]:
        with silent_port() as port:
            url = f"http://127.0.0.1:{port}/sessions/{{session_id}}"
            yield backend_from_url(url, timeout=TIMEOUT)


def django_alias(alias: str, **conf: Any) -> str:
    """Add a connection ``alias`` to Django's (test) settings, once per process."""
    from django.db import connections

    if alias not in connections.settings:
        given = {"default": connections.settings["default"], alias: conf}
        connections.settings[alias] = connections.configure_settings(given)[alias]
    return alias


class DjangoHarness(Harness):
    """``backend = "django"``: the app's model on the test SQLite file."""

    name = "django"

    def __init__(self) -> None:
        from tests import django_settings

        django_settings.setup()
        from django.db import connections

        from sessionmw.backends.django import DjangoBackend

        self.store = DjangoBackend("django")
        self.store.create_schema()
        self.store.model.objects.all().delete()
        self.backend = self.store
        self.path = str(connections["default"].settings_dict["NAME"])

    def put_raw(self, session_id: str, fields: Fields) -> None:
        from django.db import connections

        row = {"user_id": "u", "status": "active", "expires_at": None, "issued_at": None}
        row.update(_json_data(fields))
        row.setdefault("data", None)
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "INSERT INTO device_sessions (session_id, user_id, status, expires_at,"
                " issued_at, data) VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    session_id,
                    *(row[k] for k in ("user_id", "status", "expires_at", "issued_at", "data")),
                ],
            )

    def refused(self) -> Backend:
        alias = django_alias(
            "refused",
            ENGINE="django.db.backends.postgresql",
            HOST="127.0.0.1",
            PORT=str(free_port()),
            NAME="t",
            USER="postgres",
        )
        return backend_from_url(f"django://{alias}", timeout=TIMEOUT)

    @contextmanager
    def stalled(self) -> Iterator[Backend]:
        """Another connection holds an exclusive lock on the database file (the
        alias's SQLite busy timeout is the sync bound, as a deployment sets it)."""
        alias = django_alias(
            "stalled",
            ENGINE="django.db.backends.sqlite3",
            NAME=self.path,
            OPTIONS={"timeout": TIMEOUT},
        )
        blocker = sqlite3.connect(self.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield backend_from_url(f"django://{alias}", timeout=TIMEOUT)
        finally:
            blocker.rollback()
            blocker.close()

    def clear(self) -> None:
        self.store.model.objects.all().delete()


ALL = ["memory", "sqlite", "postgres", "redis", "http", "django"]
NETWORKED = ["sqlite", "postgres", "redis", "http", "django"]  # every store that can fail


async def _harness(name: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if name == "memory":
        yield MemoryHarness()
    elif name == "sqlite":
        harness: SQLiteHarness = SQLiteHarness(request.getfixturevalue("tmp_path"))
        yield harness
        harness.store.close()
    elif name == "postgres":
        pg = PostgresHarness(request.getfixturevalue("postgres_url"))
        yield pg
        pg.drop()
        pg.store.close()
    elif name == "redis":
        client = request.getfixturevalue("redis_client")  # flushed around the test
        rh = RedisHarness(request.getfixturevalue("redis_url"), client)
        yield rh
        await aclose(rh.backend)
    elif name == "django":
        # The contract calls the sync path from async tests too; Django refuses sync
        # ORM calls in a thread running an event loop unless told this is on purpose.
        request.getfixturevalue("monkeypatch").setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
        dh = DjangoHarness()
        yield dh
        dh.clear()
    else:
        with auth_service() as (service, url):
            hh = HTTPHarness(service, url)
            yield hh
            await aclose(hh.backend)


@pytest.fixture(params=ALL)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async for harness in _harness(request.param, request):
        yield harness


@pytest.fixture(params=NETWORKED)
async def real_store(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async for harness in _harness(request.param, request):
        yield harness


async def both(backend: Backend, session_id: str) -> list[SessionRecord | None]:
    """The answers of ``lookup`` and ``alookup``."""
    return [backend.lookup(session_id), await backend.alookup(session_id)]


def no_raw_id(logs: Sequence[Mapping[str, Any]], *errors: BaseException) -> None:
    assert SID not in repr(logs)
    for error in errors:
        assert SID not in str(error)
        assert SID not in repr(error)


# -- found, unknown, revoked ---------------------------------------------------------


async def test_found(store: Harness) -> None:
    """A stored active session comes back with every field, on both paths."""
    fields = {
        "user_id": "user-1",
        "status": "active",
        "expires_at": NOW + 60,
        "issued_at": NOW - 60,
        "data": {"role": "admin", "n": [1, 2]},
    }
    store.put_raw(SID, fields)
    expected = SessionRecord(
        SID, "user-1", SessionStatus.ACTIVE, NOW + 60, NOW - 60, {"role": "admin", "n": [1, 2]}
    )
    with capture_logs() as logs:
        assert await both(store.backend, SID) == [expected, expected]
    assert logs == []


async def test_optional_fields_absent(store: Harness) -> None:
    """Only ``user_id`` and ``status`` are required."""
    store.put_raw(SID, {"user_id": "u", "status": "active"})
    expected = SessionRecord(SID, "u", SessionStatus.ACTIVE)
    assert await both(store.backend, SID) == [expected, expected]


async def test_unknown(store: Harness) -> None:
    """A session the store does not hold is ``None``, silently."""
    store.put_raw("someone-else", {"user_id": "u", "status": "active"})
    with capture_logs() as logs:
        assert await both(store.backend, SID) == [None, None]
    assert logs == []


async def test_revoked_is_returned_as_stored(store: Harness) -> None:
    """The store reports revocation; deciding what it means is the gate's job."""
    store.put_raw(SID, {"user_id": "u", "status": "revoked", "issued_at": NOW - 10})
    expected = SessionRecord(SID, "u", SessionStatus.REVOKED, None, NOW - 10)
    assert await both(store.backend, SID) == [expected, expected]


# -- malformed rows ------------------------------------------------------------------

MALFORMED: list[tuple[str, Fields, str]] = [
    ("bad-status", {"status": "deleted"}, "status"),
    ("status-case", {"status": "Active"}, "status"),
    ("empty-user", {"user_id": ""}, "user_id"),
    ("non-numeric-time", {"expires_at": "tomorrow"}, "expires_at"),
    ("ms-expires", {"expires_at": 1767225600000}, "expires_at is after 3000-01-01"),
    ("ms-issued", {"issued_at": NOW * 1000}, "issued_at is after 3000-01-01"),
    ("bad-json-data", {"data": "{oops"}, "data is not valid JSON"),
    ("data-not-object", {"data": "[1, 2]"}, "data is not a JSON object"),
]


@pytest.mark.parametrize(
    ("fields", "problem"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
async def test_malformed_row_is_unknown_and_logged(
    real_store: Harness, fields: Fields, problem: str
) -> None:
    """A malformed row is read as unknown, with one log line per lookup naming the
    problem and the session's hash, never the raw ID."""
    real_store.put_raw(SID, {"user_id": "u", "status": "active", **fields})
    with capture_logs() as logs:
        assert await both(real_store.backend, SID) == [None, None]
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED] * 2
    assert [entry["log_level"] for entry in logs] == ["warning"] * 2
    assert all(entry["session"] == hash_id(SID) for entry in logs)
    assert all(problem in entry["problem"] for entry in logs), logs
    if "3000" in problem:
        assert all("milliseconds" in entry["problem"] for entry in logs)
    no_raw_id(logs)


# -- unavailable stores --------------------------------------------------------------


async def test_refused_connection_is_unavailable(real_store: Harness) -> None:
    """A store that refuses the connection: BackendUnavailable at once, sync and
    async, with no raw ID in the message."""
    backend = real_store.refused()
    with capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as sync_info:
            backend.lookup(SID)
        with pytest.raises(BackendUnavailable) as async_info:
            await backend.alookup(SID)
        elapsed = time.monotonic() - started
    await aclose(backend)
    assert elapsed < 1.5, "a refused connection is not waited on"
    no_raw_id(logs, sync_info.value, async_info.value)


async def test_sync_timeout_is_unavailable(real_store: Harness) -> None:
    """A store that accepts and never answers: the sync lookup gives up in bounded
    time with BackendUnavailable."""
    with real_store.stalled() as backend, capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            backend.lookup(SID)
        elapsed = time.monotonic() - started
        await aclose(backend)
    assert elapsed < BOUND
    no_raw_id(logs, info.value)


async def test_async_timeout_is_unavailable(real_store: Harness) -> None:
    """The async lookup gives up after the backend timeout, whatever the driver's
    own connect timeout, with BackendUnavailable."""
    with real_store.stalled() as backend, capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            await backend.alookup(SID)
        elapsed = time.monotonic() - started
        await aclose(backend)
    assert elapsed < TIMEOUT + 1.0
    no_raw_id(logs, info.value)
