"""MemoryBackend and backend_from_url (no service needed: every backend is lazy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from sessionmw import ConfigError, SessionRecord, SessionStatus
from sessionmw.backends import Backend, MemoryBackend, backend_from_url
from sessionmw.backends.http import HTTPBackend
from sessionmw.backends.redis import RedisBackend
from sessionmw.backends.sql import SQLBackend
from tests.conftest import free_port


def test_memory_backend_put_lookup_delete() -> None:
    record = SessionRecord("s1", "u1", SessionStatus.ACTIVE, expires_at=5.0)
    backend = MemoryBackend([record])
    assert len(backend) == 1
    assert backend.lookup("s1") is record
    assert backend.lookup("other") is None
    revoked = SessionRecord("s1", "u1", SessionStatus.REVOKED)
    backend.put(revoked)
    assert backend.lookup("s1") is revoked
    backend.delete("s1")
    backend.delete("s1")
    assert backend.lookup("s1") is None
    assert len(backend) == 0


async def test_memory_backend_alookup() -> None:
    record = SessionRecord("s1", "u1", SessionStatus.ACTIVE)
    backend = MemoryBackend([record])
    assert await backend.alookup("s1") is record
    assert await backend.alookup("s2") is None


def test_from_url_memory() -> None:
    backend = backend_from_url("memory://")
    assert isinstance(backend, MemoryBackend)
    assert isinstance(backend, Backend)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        "rediss://127.0.0.1:{port}/0",
        "unix:///tmp/sessionmw-no-such.sock",
    ],
)
def test_from_url_redis_is_lazy(url: str) -> None:
    backend = backend_from_url(url.format(port=free_port()), timeout=0.5)
    assert isinstance(backend, RedisBackend)
    assert isinstance(backend, Backend)
    assert backend.timeout == 0.5
    backend.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:{port}/s/{{session_id}}", "https://auth.invalid/v1/{{session_id}}"]
)
def test_from_url_http_is_lazy(url: str) -> None:
    backend = backend_from_url(url.format(port=free_port()), timeout=0.5)
    assert isinstance(backend, HTTPBackend)
    assert isinstance(backend, Backend)
    backend.close()


def test_from_url_sqlite_is_lazy(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    backend = backend_from_url(f"sqlite:///{path}?table=my_sessions")
    assert isinstance(backend, SQLBackend)
    assert isinstance(backend, Backend)
    assert backend.table_name == "my_sessions"
    assert not path.exists()  # nothing opened yet
    backend.close()


_BARE_PG = "postgresql" if importlib.util.find_spec("psycopg2") else "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", _BARE_PG),
        ("postgres://postgres@127.0.0.1:1/test", _BARE_PG),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", "postgresql+psycopg"),
        ("postgres+psycopg://postgres@127.0.0.1:1/test", "postgresql+psycopg"),
    ],
)
def test_from_url_postgres_driver(url: str, driver: str) -> None:
    backend = backend_from_url(url)
    assert isinstance(backend, SQLBackend)
    assert backend.engine.url.drivername == driver
    assert backend.table_name == "device_sessions"
    backend.close()


@pytest.mark.parametrize("url", ["ftp://x/", "mongodb://localhost/db", "nonsense", "file:///x"])
def test_from_url_unknown_scheme_names_backend(url: str) -> None:
    with pytest.raises(ConfigError, match="backend") as info:
        backend_from_url(url)
    assert info.value.key == "backend"


@pytest.mark.parametrize(
    "table", ["bad-name", "x;drop table y", "1abc", "a.b", "", "a" * 64, "t%20x"]
)
def test_sql_table_name_must_be_an_identifier(table: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_url(f"sqlite:///x.db?table={table}")
    assert info.value.key == "backend"


def test_sql_table_given_twice_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_url("sqlite:///x.db?table=a&table=b")
    assert info.value.key == "backend"


def test_http_url_without_placeholder_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_url("http://127.0.0.1/sessions/")
    assert info.value.key == "backend"


def test_bad_timeout_is_rejected() -> None:
    for make in (
        lambda: SQLBackend("sqlite:///x.db", timeout=0, engine=None),
        lambda: RedisBackend("redis://127.0.0.1/0", timeout=-1, client=None),
        lambda: HTTPBackend("http://h/{session_id}", timeout=float("nan"), client=None),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.key == "backend_timeout"


def test_wrong_client_types_are_rejected() -> None:
    with pytest.raises(ConfigError):
        RedisBackend("redis://127.0.0.1/0", timeout=1, client=object())
    with pytest.raises(ConfigError):
        HTTPBackend("http://h/{session_id}", timeout=1, client=object())
    with pytest.raises(ConfigError):
        backend_from_url("sqlite:///x.db", client=object())


def test_given_clients_are_kept() -> None:
    engine = sa.create_engine("sqlite://")
    sync_redis = redis.Redis()
    http_client = httpx.Client()
    try:
        sql_backend = backend_from_url("sqlite:///unused.db", client=engine)
        assert isinstance(sql_backend, SQLBackend)
        assert sql_backend.engine is engine
        sql_backend.close()  # a given engine is not disposed by the backend
        assert sql_backend.engine is engine
        redis_backend = backend_from_url("redis://127.0.0.1:1/0", client=sync_redis)
        assert isinstance(redis_backend, RedisBackend)
        assert redis_backend._sync_client() is sync_redis
        http_backend = backend_from_url("http://h/{session_id}", client=http_client)
        assert isinstance(http_backend, HTTPBackend)
        assert http_backend._sync_client() is http_client
        http_backend.close()
        assert not http_client.is_closed
    finally:
        engine.dispose()
        sync_redis.close()
        http_client.close()


# -- the write side: Store ---------------------------------------------------------


def test_writable_stores_satisfy_store_and_http_does_not(tmp_path: Path) -> None:
    """Memory, SQL and Redis stores offer the write side the CLI and demo use;
    an auth service (read-only for sessionmw) does not."""
    from sessionmw.backends import Store

    stores = [
        MemoryBackend(),
        backend_from_url(f"sqlite:///{tmp_path / 's.db'}"),
        backend_from_url(f"redis://127.0.0.1:{free_port()}/0"),
    ]
    for store in stores:
        assert isinstance(store, Store), type(store).__name__
        assert isinstance(store, Backend)
    http = backend_from_url("http://127.0.0.1:1/s/{session_id}")
    assert not isinstance(http, Store)
    for closable in (*stores, http):
        closable.close()  # type: ignore[attr-defined]


def test_memory_store_management_api() -> None:
    """The same management API as the SQL and Redis stores, on a dict."""
    store = MemoryBackend()
    assert store.schema_missing() == []
    assert store.create_schema() == []
    a = SessionRecord("a", "alice", SessionStatus.ACTIVE, 100.0, 50.0, {"k": "v"})
    b = SessionRecord("b", "bob", SessionStatus.ACTIVE)
    c = SessionRecord("c", "alice", SessionStatus.REVOKED)
    for record in (c, b, a):
        store.put(record)
    assert store.list_sessions() == [a, b, c]
    assert store.list_sessions(user_id="alice") == [a, c]
    assert store.list_sessions(limit=1) == [a]
    assert store.list_sessions(user_id="nobody") == []
    with pytest.raises(ValueError, match="limit"):
        store.list_sessions(limit=-1)
    assert store.set_status("b", SessionStatus.REVOKED) is True
    assert store.lookup("b") == SessionRecord("b", "bob", SessionStatus.REVOKED)
    assert store.set_status("a", "revoked") is True
    got = store.lookup("a")
    assert got is not None
    assert (got.status, got.expires_at, dict(got.data)) == (
        SessionStatus.REVOKED,
        100.0,
        {"k": "v"},
    )
    assert store.set_status("missing", "revoked") is False
    assert store.lookup("missing") is None
    with pytest.raises(ValueError, match="bogus"):
        store.set_status("b", "bogus")
    store.close()
    assert store.lookup("c") == c, "close() keeps an in-process store's records"
