"""Upgrading a store written by the previous version (SPEC section 6, "Lifecycle
additions"): an old-layout SQL table (SQLite, PostgreSQL) and Redis hashes written
without the per-user sets keep authenticating before and after
``sessionmw sessions migrate --backend URL``, which adds what is missing, never drops
anything, and does nothing the second time.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus, StoredSession
from sessionmw.backends import backend_from_url
from sessionmw.backends.redis import (
    IDP_SID_PREFIX,
    SCHEMA_KEY,
    USER_PREFIX,
    RedisBackend,
    session_key,
)
from sessionmw.backends.sql import SQLBackend
from sessionmw.cli import main
from tests.test_stores_lifecycle import expire_time_ms

NOW = time.time()

#: The previous version's DDL (no last_seen, idp_sid or indexes).
OLD_DDL = (
    "CREATE TABLE {table} (session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
    "status TEXT NOT NULL, expires_at {double} NULL, issued_at {double} NULL, data TEXT NULL)"
)
OLD_ROWS: list[dict[str, Any]] = [
    {"sid": "old-1", "user": "alice", "status": "active", "exp": NOW + 3600, "iss": NOW - 20},
    {"sid": "old-2", "user": "alice", "status": "active", "exp": None, "iss": NOW - 10},
    {"sid": "old-3", "user": "alice", "status": "revoked", "exp": None, "iss": NOW - 5},
    {"sid": "old-4", "user": "bob", "status": "active", "exp": NOW + 1800, "iss": None},
]


def migrate(capsys: pytest.CaptureFixture[str], url: str) -> tuple[int, str]:
    code = main(["sessions", "migrate", "--backend", url])
    out, _ = capsys.readouterr()
    return code, out


def fresh(url: str) -> StoredSession:
    return StoredSession(
        "new-1", "alice", SessionStatus.ACTIVE, NOW + 600, NOW, {"k": 1}, NOW, "idp-1"
    )


# -- SQL --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def old_table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an old-layout table holding :data:`OLD_ROWS`, dropped afterwards."""
    table = f"old_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        base, double = f"sqlite:///{tmp_path / 'old.db'}", "REAL"
    else:
        base, double = request.getfixturevalue("postgres_url"), "DOUBLE PRECISION"
    engine = SQLBackend(base).engine
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_DDL.format(table=table, double=double)))
        conn.execute(
            sa.text(
                f"INSERT INTO {table} (session_id, user_id, status, expires_at, issued_at, data)"  # noqa: S608
                " VALUES (:sid, :user, :status, :exp, :iss, '{\"r\": 1}')"
            ),
            OLD_ROWS,
        )
    try:
        yield f"{base}?table={table}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def _columns_and_indexes(store: SQLBackend) -> tuple[set[str], set[str]]:
    inspector = sa.inspect(store.engine)
    columns = {c["name"] for c in inspector.get_columns(store.table_name)}
    indexed = {
        i["column_names"][0]
        for i in inspector.get_indexes(store.table_name)
        if i["column_names"] and i["column_names"][0]
    }
    return columns, indexed


def _expected_old(sid: str) -> SessionRecord:
    row = next(r for r in OLD_ROWS if r["sid"] == sid)
    return SessionRecord(
        sid, row["user"], SessionStatus(row["status"]), row["exp"], row["iss"], {"r": 1}
    )


async def test_old_sql_table_before_and_after_migrate(
    capsys: pytest.CaptureFixture[str], old_table: str
) -> None:
    store = SQLBackend(old_table)  # a long-running app's store: reads the layout once
    table = store.table_name
    try:
        # Before: lookups authenticate, reads work, writes that need the new columns
        # say to migrate.
        for row in OLD_ROWS:
            assert store.lookup(row["sid"]) == _expected_old(row["sid"])
            assert await store.alookup(row["sid"]) == _expected_old(row["sid"])
        assert [s.session_id for s in store.list_user("alice")] == ["old-2", "old-1"]
        assert store.ids_for_idp_sid("idp-1") == []
        assert store.revoke_user("bob") == ["old-4"]
        with pytest.raises(BackendUnavailable, match="sessions migrate"):
            store.create(fresh(old_table))
        with pytest.raises(BackendUnavailable, match="sessions migrate"):
            store.touch_many([("old-1", NOW)])
        assert store.schema_missing() == [
            f"column {table}.last_seen",
            f"column {table}.idp_sid",
            f"index ix_{table}_user_id on {table} (user_id)",
            f"index ix_{table}_idp_sid on {table} (idp_sid)",
        ]

        code, out = migrate(capsys, old_table)
        assert code == 0
        assert out.splitlines() == [
            f"added column {table}.last_seen",
            f"added column {table}.idp_sid",
            f"created index ix_{table}_user_id on {table} (user_id)",
            f"created index ix_{table}_idp_sid on {table} (idp_sid)",
        ]
        assert migrate(capsys, old_table) == (0, "nothing to do: the schema is up to date\n")
        columns, indexed = _columns_and_indexes(store)
        assert {"last_seen", "idp_sid", "data"} <= columns
        assert {"user_id", "idp_sid"} <= indexed
        assert store.schema_missing() == []

        # After, on the same store object and on a new one: old rows still
        # authenticate; the lifecycle writes work.
        another = SQLBackend(old_table)
        for current in (store, another):
            assert current.lookup("old-1") == _expected_old("old-1")
            assert await current.alookup("old-2") == _expected_old("old-2")
        another.close()
        store.create(fresh(old_table))
        assert store.get("new-1") == fresh(old_table)
        assert [s.session_id for s in store.list_user("alice")] == ["new-1", "old-2", "old-1"]
        store.touch_many([("old-1", NOW + 1), ("new-1", NOW + 2), ("ghost", NOW)])
        assert [store.get(sid).last_seen for sid in ("old-1", "new-1")] == [NOW + 1, NOW + 2]  # type: ignore[union-attr]
        assert store.get("ghost") is None
        assert store.ids_for_idp_sid("idp-1") == ["new-1"]
        assert store.lookup("old-1") == StoredSession(
            "old-1", "alice", SessionStatus.ACTIVE, NOW + 3600, NOW - 20, {"r": 1}, NOW + 1
        )
    finally:
        store.close()


def test_sql_migrate_of_a_missing_table_creates_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}?table=fresh"
    assert migrate(capsys, url) == (0, "created table fresh\n")
    store = SQLBackend(url)
    columns, indexed = _columns_and_indexes(store)
    assert {"last_seen", "idp_sid"} <= columns
    assert {"user_id", "idp_sid"} <= indexed
    assert store.schema_missing() == []
    store.close()


def test_sql_index_names_stay_within_63_characters(tmp_path: Path) -> None:
    table = "t" * 63
    store = SQLBackend(f"sqlite:///{tmp_path / 'long.db'}?table={table}")
    store.create_schema()
    names = [i["name"] or "" for i in sa.inspect(store.engine).get_indexes(table)]
    assert len(names) == 2
    assert all(len(name) <= 63 for name in names)
    store.close()


# -- Redis ------------------------------------------------------------------------------


def _old_hash(client: redis.Redis, sid: str, **fields: Any) -> None:
    """A session hash as the previous version wrote it: no sets, no expiry."""
    client.hset(session_key(sid), mapping={k: str(v) for k, v in fields.items()})


async def test_old_redis_hashes_get_their_sets(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis_client: redis.Redis
) -> None:
    raw = redis_client
    _old_hash(raw, "r1", user_id="alice", status="active", expires_at=NOW + 3600, issued_at=NOW)
    _old_hash(raw, "r2", user_id="alice", status="active", issued_at=NOW - 5)
    _old_hash(raw, "r3", user_id="bob", status="revoked", idp_sid="idp-9")
    _old_hash(raw, "past", user_id="bob", status="active", expires_at=NOW - 60)
    _old_hash(raw, "bad", user_id="bob", status="active", expires_at=NOW * 1000)
    raw.set(session_key("not-a-hash"), "x")
    store = backend_from_url(redis_url)
    assert isinstance(store, RedisBackend)
    try:
        assert store.lookup("r1") == SessionRecord(
            "r1", "alice", SessionStatus.ACTIVE, NOW + 3600, NOW
        )
        assert await store.alookup("r2") is not None
        assert store.list_user("alice") == [], "no sets yet: nothing scanned to find them"
        assert store.schema_missing() != []

        code, out = migrate(capsys, redis_url)
        assert code == 0
        assert out.splitlines() == [
            f"added 5 sessions to their user's set {USER_PREFIX}*",
            f"added 1 sessions to their idp-sid set {IDP_SID_PREFIX}*",
            "set 1 session hashes to expire at their expires_at",
            f"recorded the layout version in {SCHEMA_KEY}",
        ]
        assert migrate(capsys, redis_url) == (0, "nothing to do: the schema is up to date\n")
        assert store.schema_missing() == []

        assert raw.smembers(USER_PREFIX + "alice") == {b"r1", b"r2"}
        assert raw.smembers(USER_PREFIX + "bob") == {b"r3", b"past", b"bad"}
        assert raw.smembers(IDP_SID_PREFIX + "idp-9") == {b"r3"}
        assert expire_time_ms(raw, session_key("r1")) == math.ceil((NOW + 3600) * 1000)
        assert raw.ttl(session_key("r2")) == -1, "no expires_at, no expiry"
        assert raw.exists(session_key("past")) == 1, "migrate never deletes"
        assert raw.get(session_key("not-a-hash")) == b"x"

        assert [s.session_id for s in store.list_user("alice")] == ["r1", "r2"]
        assert store.lookup("r1") == SessionRecord(
            "r1", "alice", SessionStatus.ACTIVE, NOW + 3600, NOW
        )
        assert store.ids_for_idp_sid("idp-9") == ["r3"]
        store.create(fresh(redis_url))
        store.touch_many([("r2", NOW + 1), ("new-1", NOW + 2)])
        assert [s.session_id for s in store.list_user("alice")] == ["new-1", "r1", "r2"]
        assert store.get("r2").last_seen == NOW + 1  # type: ignore[union-attr]
        assert store.revoke_user("alice", keep="new-1") == ["r1", "r2"]
    finally:
        await store.aclose()


def test_redis_migrate_of_an_empty_database_does_nothing(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis_client: redis.Redis
) -> None:
    assert migrate(capsys, redis_url) == (0, "nothing to do: the schema is up to date\n")
    assert redis_client.dbsize() == 0
