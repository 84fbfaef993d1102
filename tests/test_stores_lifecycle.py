"""The write side of the writable stores (SPEC sections 6 and 11): ``create``, ``get``,
``list_user``, ``revoke``, ``revoke_user``, ``ids_for_idp_sid`` and ``touch_many``, and
their async twins, on every store that sessionmw writes to: an in-process dict, a
SQLite file, PostgreSQL and Redis (real services, as in ``test_backend_contract``).

Each case runs the sync method and its ``a``-prefixed twin and expects the same
answers; the Redis cases also check the keys the layout promises (per-user and
idp-sid sets, hash expiry) and that listing a user never scans the keyspace.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import pytest
import redis
import sqlalchemy as sa
from redis.connection import AbstractConnection
from structlog.testing import capture_logs

from sessionmw import BackendUnavailable, SessionStatus, StoredSession
from sessionmw._log import BACKEND_MALFORMED
from sessionmw.backends import Store
from sessionmw.backends.redis import (
    IDP_SID_PREFIX,
    KEY_PREFIX,
    USER_PREFIX,
    RedisBackend,
    session_key,
)
from sessionmw.backends.sql import SQLBackend
from tests.test_backend_contract import (
    DjangoHarness,
    Harness,
    MemoryHarness,
    PostgresHarness,
    RedisHarness,
    SQLiteHarness,
    aclose,
)

T = TypeVar("T")
NOW = time.time()
#: Characters a store or a driver might quote, escape or echo back.
SID = "sid+Raw/ID='x'=="
STORES = ["memory", "sqlite", "postgres", "redis", "django"]
NETWORKED = ["sqlite", "postgres", "redis", "django"]


class Case:
    """A store under test, typed as the writable :class:`Store` it is."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.name = harness.name
        self.store = cast(Store, harness.backend)

    @property
    def redis(self) -> redis.Redis:
        assert isinstance(self.harness, RedisHarness)
        return cast(redis.Redis, self.harness.client)

    @property
    def sql(self) -> SQLBackend:
        assert isinstance(self.store, SQLBackend)
        return self.store

    def set_raw(self, session_id: str, field: str, value: Any) -> None:
        """Write one field as the store holds it, bypassing every check."""
        if self.name == "redis":
            self.redis.hset(session_key(session_id), field, str(value))
        elif self.name == "django":
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE device_sessions SET {field} = %s WHERE session_id = %s",  # noqa: S608
                    [value, session_id],
                )
        else:
            table = self.sql.table_name
            stmt = sa.text(f"UPDATE {table} SET {field} = :v WHERE session_id = :sid")  # noqa: S608
            with self.sql.engine.begin() as conn:
                conn.execute(stmt, {"v": value, "sid": session_id})


async def _case(name: str, request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    if name == "memory":
        yield Case(MemoryHarness())
    elif name == "sqlite":
        lite = SQLiteHarness(request.getfixturevalue("tmp_path"))
        yield Case(lite)
        lite.store.close()
    elif name == "postgres":
        pg = PostgresHarness(request.getfixturevalue("postgres_url"))
        yield Case(pg)
        pg.drop()
        pg.store.close()
    elif name == "django":
        # Sync store calls from async tests are on purpose here (see the contract).
        request.getfixturevalue("monkeypatch").setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
        dh = DjangoHarness()
        yield Case(dh)
        dh.clear()
    else:
        client = request.getfixturevalue("redis_client")  # flushed around the test
        rh = RedisHarness(request.getfixturevalue("redis_url"), client)
        yield Case(rh)
        await aclose(rh.backend)


@pytest.fixture(params=STORES)
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    async for made in _case(request.param, request):
        yield made


@pytest.fixture(params=NETWORKED)
async def real_case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    async for made in _case(request.param, request):
        yield made


@pytest.fixture
async def redis_case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    async for made in _case("redis", request):
        yield made


async def both(sync: Callable[..., T], asynchronous: Callable[..., Awaitable[T]], *args: Any) -> T:
    """The answer of ``sync(*args)``, checked equal to that of its async twin."""
    answer = sync(*args)
    assert await asynchronous(*args) == answer
    return answer


def session(
    session_id: str,
    user_id: str = "alice",
    *,
    issued_at: float | None = NOW - 100,
    expires_at: float | None = NOW + 3600,
    status: SessionStatus = SessionStatus.ACTIVE,
    last_seen: float | None = NOW - 50,
    idp_sid: str | None = None,
    data: dict[str, Any] | None = None,
) -> StoredSession:
    return StoredSession(
        session_id, user_id, status, expires_at, issued_at, data or {}, last_seen, idp_sid
    )


def ids(sessions: Sequence[StoredSession]) -> list[str]:
    return [s.session_id for s in sessions]


# -- create and get --------------------------------------------------------------------


async def test_create_then_get_every_field(case: Case) -> None:
    """What ``create`` wrote comes back from ``get`` (and ``lookup``, which carries
    ``last_seen`` now) with every field, on both paths."""
    stored = session(SID, idp_sid="idp-1", data={"role": "admin", "n": [1, 2]})
    case.store.create(stored)
    assert await both(case.store.get, case.store.aget, SID) == stored
    assert case.store.lookup(SID) == stored
    assert await case.store.alookup(SID) == stored
    assert (await case.store.alookup(SID)).last_seen == NOW - 50  # type: ignore[union-attr]


async def test_acreate_and_optional_fields(case: Case) -> None:
    """Only ``user_id`` and ``status`` are required; the async twin writes too."""
    bare = StoredSession("bare", "bob", SessionStatus.ACTIVE)
    await case.store.acreate(bare)
    assert await both(case.store.get, case.store.aget, "bare") == bare
    assert case.store.lookup("bare") == bare.record()


async def test_create_refuses_a_taken_id(case: Case) -> None:
    case.store.create(session(SID))
    with pytest.raises(ValueError, match="already") as info:
        case.store.create(session(SID, "mallory"))
    assert SID not in str(info.value)
    with pytest.raises(ValueError, match="already"):
        await case.store.acreate(session(SID, "mallory"))
    assert case.store.get(SID) == session(SID)


async def test_get_unknown_is_none(case: Case) -> None:
    case.store.create(session("someone-else"))
    assert await both(case.store.get, case.store.aget, SID) is None


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("last_seen", 1767225600000, "milliseconds"),
        ("expires_at", NOW * 1000, "milliseconds"),
        ("status", "deleted", "status"),
    ],
)
async def test_get_malformed_is_none_and_logged(
    real_case: Case, field: str, value: Any, problem: str
) -> None:
    """Same rules as ``lookup``: a malformed row (the year-3000 rule included, for
    ``last_seen`` too) is ``None`` and logged without the raw ID."""
    real_case.store.create(session(SID))
    real_case.set_raw(SID, field, value)
    with capture_logs() as logs:
        assert await both(real_case.store.get, real_case.store.aget, SID) is None
        assert real_case.store.lookup(SID) is None
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED] * 3
    with capture_logs() as logs:
        assert real_case.store.list_user("alice") == []
    assert SID not in repr(logs)
    assert all(problem in entry["problem"] for entry in logs)
    assert SID not in repr(logs)


# -- list_user -------------------------------------------------------------------------


async def test_list_user_newest_first_active_unexpired_only(case: Case) -> None:
    store = case.store
    store.create(session("old", issued_at=NOW - 300))
    store.create(session("new", issued_at=NOW - 10))
    store.create(session("mid", issued_at=NOW - 100, expires_at=None))
    store.create(session("undated", issued_at=None))
    store.create(session("revoked", issued_at=NOW - 5, status=SessionStatus.REVOKED))
    store.create(session("expired", issued_at=NOW - 5, expires_at=NOW - 1))
    store.create(session("other-user", "bob", issued_at=NOW))
    store.create(session("later-revoked", issued_at=NOW - 1))
    assert store.revoke("later-revoked")
    listed = await both(store.list_user, store.alist_user, "alice")
    assert ids(listed) == ["new", "mid", "old", "undated"]
    assert all(isinstance(s, StoredSession) for s in listed)
    assert listed[0] == session("new", issued_at=NOW - 10)
    assert ids(store.list_user("bob")) == ["other-user"]
    assert await both(store.list_user, store.alist_user, "nobody") == []


# -- revoke ----------------------------------------------------------------------------


async def test_revoke_is_idempotent(case: Case) -> None:
    store = case.store
    store.create(session(SID))
    store.create(session("s2"))
    assert store.revoke(SID) is True
    assert store.revoke(SID) is False
    assert await store.arevoke("s2") is True
    assert await store.arevoke("s2") is False
    assert store.revoke("unknown") is False
    assert await store.arevoke("unknown") is False
    revoked = store.get(SID)
    assert revoked is not None
    assert revoked.status is SessionStatus.REVOKED
    assert revoked == session(SID, status=SessionStatus.REVOKED), "only the status changed"
    assert store.get("unknown") is None, "revoke never creates a session"
    if case.name == "redis":
        assert case.redis.exists(session_key("unknown")) == 0


async def test_revoke_user_without_keep(case: Case) -> None:
    store = case.store
    for sid in ("a1", "a2", "a3"):
        store.create(session(sid))
    store.create(session("a-revoked", status=SessionStatus.REVOKED))
    store.create(session("a-expired", expires_at=NOW - 1))
    store.create(session("b1", "bob"))
    assert store.revoke_user("alice") == ["a1", "a2", "a3"]
    assert store.revoke_user("alice") == [], "idempotent"
    assert await store.arevoke_user("alice") == []
    assert store.list_user("alice") == []
    for sid in ("a1", "a2", "a3"):
        got = store.get(sid)
        assert got is not None
        assert got.status is SessionStatus.REVOKED
    assert ids(store.list_user("bob")) == ["b1"], "other users untouched"
    assert await store.arevoke_user("bob") == ["b1"]
    assert store.revoke_user("nobody") == []


async def test_revoke_user_keeps_one(case: Case) -> None:
    store = case.store
    for n, sid in enumerate(("a1", "a2", "keep-me")):
        store.create(session(sid, issued_at=NOW - 100 + n))
    assert store.revoke_user("alice", keep="keep-me") == ["a1", "a2"]
    assert ids(store.list_user("alice")) == ["keep-me"]
    assert await store.arevoke_user("alice", "keep-me") == []
    assert store.revoke_user("alice", keep="not-hers") == ["keep-me"]


# -- ids_for_idp_sid -------------------------------------------------------------------


async def test_ids_for_idp_sid(case: Case) -> None:
    store = case.store
    store.create(session("x2", idp_sid="idp-x"))
    store.create(session("x1", "bob", idp_sid="idp-x"))
    store.create(session("y1", idp_sid="idp-y"))
    store.create(session("none"))
    assert await both(store.ids_for_idp_sid, store.aids_for_idp_sid, "idp-x") == ["x1", "x2"]
    store.revoke("x1")
    assert store.ids_for_idp_sid("idp-x") == ["x1", "x2"], "any status"
    assert await both(store.ids_for_idp_sid, store.aids_for_idp_sid, "idp-y") == ["y1"]
    assert await both(store.ids_for_idp_sid, store.aids_for_idp_sid, "unknown") == []
    # Exact matches only: "idp-1" is a prefix of "idp-10" and names another session.
    store.create(session("p1", idp_sid="idp-1"))
    store.create(session("p10", idp_sid="idp-10"))
    assert await both(store.ids_for_idp_sid, store.aids_for_idp_sid, "idp-1") == ["p1"]
    assert await both(store.ids_for_idp_sid, store.aids_for_idp_sid, "idp-") == []


# -- touch_many ------------------------------------------------------------------------


async def test_touch_many_moves_last_seen_forward_only(case: Case) -> None:
    store = case.store
    store.create(session("t1", last_seen=NOW - 50))
    store.create(session("t2", last_seen=None))
    store.create(session("t3", last_seen=NOW - 50))
    store.touch_many([("t1", NOW - 10), ("t2", NOW - 20), ("t3", NOW - 90), ("ghost", NOW)])
    assert [store.get(sid).last_seen for sid in ("t1", "t2", "t3")] == [  # type: ignore[union-attr]
        NOW - 10,
        NOW - 20,
        NOW - 50,
    ]
    await store.atouch_many([("t1", NOW - 5), ("t1", NOW - 30), ("t2", NOW - 40)])
    assert store.get("t1").last_seen == NOW - 5, "the latest of the batch"  # type: ignore[union-attr]
    assert store.get("t2").last_seen == NOW - 20, "never back"  # type: ignore[union-attr]
    assert store.get("ghost") is None, "never creates a session"
    got = store.get("t1")
    assert got == session("t1", last_seen=NOW - 5), "nothing else changed"
    if case.name == "redis":
        assert case.redis.exists(session_key("ghost")) == 0
    with pytest.raises(ValueError, match="finite"):
        store.touch_many([("t1", math.inf)])


async def test_touch_many_on_a_revoked_session_keeps_it_revoked(case: Case) -> None:
    case.store.create(session("r", status=SessionStatus.REVOKED))
    case.store.touch_many([("r", NOW)])
    got = case.store.get("r")
    assert got is not None
    assert got.status is SessionStatus.REVOKED
    assert got.last_seen == NOW


@contextmanager
def sql_statements(store: SQLBackend) -> Iterator[list[str]]:
    """The SQL statements the store's engine runs meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)


@contextmanager
def redis_traffic(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], list[int]]]:
    """(names of the commands sent, one entry per write to a socket) meanwhile, for
    every redis-py connection of this process."""
    names: list[str] = []
    sends: list[int] = []
    # redis-py's connection methods are untyped.
    send_command: Callable[..., Any] = AbstractConnection.send_command
    pack_command: Callable[..., Any] = AbstractConnection.pack_command
    pack_commands: Callable[..., Any] = AbstractConnection.pack_commands
    send: Callable[..., Any] = AbstractConnection.send_packed_command

    def single(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        names.append(str(args[0]).upper())
        return send_command(self, *args, **kwargs)

    def one(self: AbstractConnection, *args: Any) -> Any:
        names.append(str(args[0]).upper())
        return pack_command(self, *args)

    def many(self: AbstractConnection, commands: Any) -> Any:
        commands = list(commands)
        names.extend(str(cmd[0]).upper() for cmd in commands)
        return pack_commands(self, commands)

    def sent(self: AbstractConnection, command: Any, check_health: bool = True) -> Any:
        sends.append(1)
        return send(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_command", single)
        patch.setattr(AbstractConnection, "pack_command", one)
        patch.setattr(AbstractConnection, "pack_commands", many)
        patch.setattr(AbstractConnection, "send_packed_command", sent)
        yield names, sends


def expire_time_ms(client: redis.Redis, key: str) -> int:
    """``PEXPIRETIME``: when the key expires, in epoch milliseconds (-1: never)."""
    answer: int = client.execute_command("PEXPIRETIME", key)  # type: ignore[no-untyped-call]
    return answer


def command_calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran ``command`` (``INFO commandstats``)."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_touch_many_is_one_round_trip(
    real_case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush of N sessions is one UPDATE on SQL, one script call on Redis; no
    items, no I/O."""
    store = real_case.store
    sids = [f"s{n}" for n in range(50)]
    for sid in sids:
        store.create(session(sid, last_seen=None))
    store.touch_many([(sids[0], NOW - 99)])  # warm: the SQL layout, the Redis script
    items = [(sid, NOW - n) for n, sid in enumerate(sids)]
    if real_case.name == "redis":
        before = command_calls(real_case.redis, "evalsha")
        with redis_traffic(monkeypatch) as (names, sends):
            store.touch_many(items)
            store.touch_many([])
            await store.atouch_many([])
        assert names == ["EVALSHA"]
        assert len(sends) == 1
        assert command_calls(real_case.redis, "evalsha") - before == 1
    elif real_case.name == "django":
        from django.db import connection

        statements: list[str] = []

        def record(execute: Any, sql: str, *args: Any) -> Any:
            statements.append(sql)
            return execute(sql, *args)

        with connection.execute_wrapper(record):
            store.touch_many(items)
            store.touch_many([])
        await store.atouch_many([])
        assert len(statements) == 1
        assert statements[0].lstrip().upper().startswith("UPDATE")
    else:
        with sql_statements(real_case.sql) as statements:
            store.touch_many(items)
            store.touch_many([])
            await store.atouch_many([])
        assert len(statements) == 1
        assert statements[0].lstrip().upper().startswith("UPDATE")
    assert [store.get(sid).last_seen for sid in sids] == [seen for _, seen in items]  # type: ignore[union-attr]


async def test_empty_touch_many_on_memory_is_a_no_op() -> None:
    store = MemoryHarness().store
    store.touch_many([])
    await store.atouch_many([])
    assert len(store) == 0


# -- Redis layout ----------------------------------------------------------------------


async def test_redis_create_writes_the_layout(redis_case: Case) -> None:
    """Hash fields (absent ones omitted), hash expiry at ``expires_at``, the user's set
    and the idp-sid set."""
    raw = redis_case.redis
    expires_at = NOW + 3600.25
    redis_case.store.create(session(SID, expires_at=expires_at, idp_sid="idp-1"))
    redis_case.store.create(StoredSession("bare", "alice", SessionStatus.ACTIVE))
    fields = raw.hgetall(session_key(SID))
    assert set(fields) == {
        b"user_id",
        b"status",
        b"expires_at",
        b"issued_at",
        b"last_seen",
        b"idp_sid",
    }
    assert fields[b"idp_sid"] == b"idp-1"
    assert float(fields[b"last_seen"]) == NOW - 50
    assert raw.hgetall(session_key("bare")) == {b"user_id": b"alice", b"status": b"active"}
    assert expire_time_ms(raw, session_key(SID)) == math.ceil(expires_at * 1000)
    assert raw.ttl(session_key("bare")) == -1, "no expires_at, no expiry"
    assert raw.smembers(USER_PREFIX + "alice") == {SID.encode(), b"bare"}
    assert raw.smembers(IDP_SID_PREFIX + "idp-1") == {SID.encode()}


async def test_redis_sets_drop_ids_of_deleted_and_expired_hashes(redis_case: Case) -> None:
    raw = redis_case.redis
    store = redis_case.store
    store.create(session("live", idp_sid="idp"))
    store.create(session("deleted", idp_sid="idp"))
    # Already expired: Redis drops the hash at once, its set memberships stay.
    store.create(session("expired", expires_at=NOW - 1, idp_sid="idp"))
    raw.delete(session_key("deleted"))
    assert raw.smembers(USER_PREFIX + "alice") == {b"live", b"deleted", b"expired"}
    assert ids(store.list_user("alice")) == ["live"]
    assert raw.smembers(USER_PREFIX + "alice") == {b"live"}
    assert store.ids_for_idp_sid("idp") == ["live"]
    assert raw.smembers(IDP_SID_PREFIX + "idp") == {b"live"}
    # A hash replaced by another user's session leaves the first user's set.
    store.put(session("live", "bob"))
    assert store.list_user("alice") == []
    assert raw.smembers(USER_PREFIX + "alice") == set()
    assert ids(store.list_user("bob")) == ["live"]


async def test_redis_revoke_user_drops_gone_ids_and_is_atomic(redis_case: Case) -> None:
    raw = redis_case.redis
    store = redis_case.store
    store.create(session("a1"))
    store.create(session("a2"))
    raw.delete(session_key("a2"))
    assert store.revoke_user("alice") == ["a1"]
    assert raw.smembers(USER_PREFIX + "alice") == {b"a1"}
    assert raw.exists(session_key("a2")) == 0, "never recreated"


async def test_redis_revoke_of_a_non_hash_is_false(redis_case: Case) -> None:
    redis_case.redis.set(session_key("str"), "x")
    with capture_logs() as logs:
        assert redis_case.store.revoke("str") is False
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED]
    redis_case.store.touch_many([("str", NOW)])
    assert redis_case.redis.get(session_key("str")) == b"x"


async def test_redis_listing_a_user_never_scans(
    redis_case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 100,000 other sessions in the store, listing (and revoking) one user's
    sessions sends no SCAN: SMEMBERS, then one pipelined HGETALL batch."""
    raw = redis_case.redis
    pipe = raw.pipeline(transaction=False)
    for n in range(100_000):
        pipe.hset(f"{KEY_PREFIX}other-{n}", mapping={"user_id": f"u{n % 5000}", "status": "active"})
        if n % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    for n in range(3):
        redis_case.store.create(session(f"mine-{n}", issued_at=NOW - n))
    assert raw.dbsize() >= 100_003
    scans = command_calls(raw, "scan")
    with redis_traffic(monkeypatch) as (names, sends):
        listed = redis_case.store.list_user("alice")
    assert command_calls(raw, "scan") == scans
    assert ids(listed) == ["mine-0", "mine-1", "mine-2"]
    assert names == ["SMEMBERS", "HGETALL", "HGETALL", "HGETALL"]
    assert len(sends) == 2
    with redis_traffic(monkeypatch) as (names, _):
        assert await redis_case.store.alist_user("alice") == listed
        assert redis_case.store.revoke_user("alice", keep="mine-0") == ["mine-1", "mine-2"]
        assert redis_case.store.ids_for_idp_sid("nope") == []
    assert "SCAN" not in names
    assert command_calls(raw, "scan") == scans


# -- unavailable stores ----------------------------------------------------------------

CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("create", (session(SID),)),
    ("get", (SID,)),
    ("list_user", ("alice",)),
    ("revoke", (SID,)),
    ("revoke_user", ("alice", SID)),
    ("ids_for_idp_sid", ("idp",)),
    ("touch_many", ([(SID, NOW)],)),
]


@pytest.mark.parametrize(("method", "args"), CALLS, ids=[call[0] for call in CALLS])
async def test_unavailable_store_raises_without_the_id(
    real_case: Case, method: str, args: tuple[Any, ...]
) -> None:
    """A store that refuses the connection: BackendUnavailable at once, sync and
    async, never with the raw session ID in the message."""
    backend = real_case.harness.refused()
    errors = []
    with capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as sync_info:
            getattr(backend, method)(*args)
        errors.append(sync_info.value)
        with pytest.raises(BackendUnavailable) as async_info:
            await getattr(backend, "a" + method)(*args)
        errors.append(async_info.value)
        elapsed = time.monotonic() - started
    await aclose(backend)
    assert elapsed < 2.5
    assert SID not in repr(logs)
    for error in errors:
        assert SID not in str(error)
        assert SID not in repr(error)


def test_every_writable_store_is_a_store_and_http_is_not() -> None:
    from sessionmw.backends import backend_from_url
    from sessionmw.backends.http import HTTPBackend

    assert isinstance(MemoryHarness().store, Store)
    assert isinstance(SQLBackend("sqlite://"), Store)
    assert isinstance(RedisBackend("redis://127.0.0.1:1/0"), Store)
    http = backend_from_url("http://127.0.0.1:1/s/{session_id}")
    assert isinstance(http, HTTPBackend)
    assert not isinstance(http, Store)
    assert not callable(getattr(http, "revoke_user", None))
    http.close()
