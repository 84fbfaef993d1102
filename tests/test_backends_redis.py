"""RedisBackend against a real Redis (database 15, flushed around each test)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aredis
from structlog.testing import capture_logs

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus
from sessionmw._log import BACKEND_MALFORMED, hash_id
from sessionmw.backends import backend_from_url
from sessionmw.backends.redis import KEY_PREFIX, RedisBackend, session_key
from tests.conftest import free_port

SID = "sid+Raw/ID=*?[x]"
NOW = time.time()


@pytest.fixture
def raw(redis_client: object) -> redis.Redis:
    return cast(redis.Redis, redis_client)


def _make(url: str, timeout: float = 2.0, client: Any = None) -> RedisBackend:
    backend = backend_from_url(url, timeout=timeout, client=client)
    assert isinstance(backend, RedisBackend)
    return backend


@pytest.fixture
async def backend(redis_url: str, raw: redis.Redis) -> AsyncIterator[RedisBackend]:
    backend = _make(redis_url)
    yield backend
    await backend.aclose()


def _no_raw_id(logs: Sequence[Mapping[str, Any]], session_id: str = SID) -> None:
    assert session_id not in repr(logs)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (in the kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


# -- lookups ---------------------------------------------------------------------


async def test_found_sync_and_async(backend: RedisBackend, raw: redis.Redis) -> None:
    raw.hset(
        session_key(SID),
        mapping={
            "user_id": "user-1",
            "status": "active",
            "expires_at": str(NOW + 60),
            "issued_at": str(NOW - 60),
            "data": '{"role": "admin"}',
        },
    )
    expected = SessionRecord(
        SID, "user-1", SessionStatus.ACTIVE, NOW + 60, NOW - 60, {"role": "admin"}
    )
    assert backend.lookup(SID) == expected
    assert await backend.alookup(SID) == expected


async def test_optional_fields_may_be_absent(backend: RedisBackend, raw: redis.Redis) -> None:
    raw.hset(session_key("s"), mapping={"user_id": "u", "status": "revoked"})
    record = await backend.alookup("s")
    assert record == SessionRecord("s", "u", SessionStatus.REVOKED)
    assert backend.lookup("s") == record


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"user_id": "u", "status": "Active"}, "status"),
        ({"user_id": "u"}, "status"),
        ({"user_id": "", "status": "active"}, "user_id"),
        ({"status": "active"}, "user_id"),
        ({"user_id": "u", "status": "active", "data": "{oops"}, "data"),
        ({"user_id": "u", "status": "active", "data": "[1]"}, "data"),
        ({"user_id": "u", "status": "active", "expires_at": "soon"}, "expires_at"),
        ({"user_id": "u", "status": "active", "issued_at": "nan"}, "issued_at"),
        ({"user_id": b"\xff\xfe", "status": "active"}, "UTF-8"),
        ({"user_id": "u", "status": "active", "expires_at": "1767225600000"}, "milliseconds"),
        ({"user_id": "u", "status": "active", "issued_at": "1.7e12"}, "milliseconds"),
    ],
)
async def test_malformed_hash_is_unknown_and_logged(
    backend: RedisBackend, raw: redis.Redis, fields: dict[Any, Any], problem: str
) -> None:
    raw.hset(session_key(SID), mapping=fields)
    with capture_logs() as logs:
        assert backend.lookup(SID) is None
        assert await backend.alookup(SID) is None
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED] * 2
    assert all(entry["session"] == hash_id(SID) for entry in logs)
    assert problem in logs[0]["problem"]
    _no_raw_id(logs)


async def test_key_of_the_wrong_type_is_unknown_and_logged(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    raw.set(session_key(SID), "not a hash")
    with capture_logs() as logs:
        assert backend.lookup(SID) is None
        assert await backend.alookup(SID) is None
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED] * 2
    _no_raw_id(logs)


# -- failures and timeouts -------------------------------------------------------


def test_sync_timeout_is_honoured(silent_port: int) -> None:
    backend = _make(f"redis://127.0.0.1:{silent_port}/0", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        backend.lookup(SID)
    assert 0.25 < time.monotonic() - started < 1.0
    assert SID not in str(info.value)
    backend.close()


async def test_async_timeout_is_honoured_without_blocking_the_loop(silent_port: int) -> None:
    backend = _make(f"redis://127.0.0.1:{silent_port}/0", timeout=0.3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await backend.alookup(SID)
    elapsed = time.monotonic() - started
    task.cancel()
    assert 0.25 < elapsed < 1.0
    assert ticks >= 10
    await backend.aclose()


# -- clients ---------------------------------------------------------------------


def test_each_event_loop_gets_its_own_async_client(redis_url: str, raw: redis.Redis) -> None:
    raw.hset(session_key("s"), mapping={"user_id": "u", "status": "active"})
    backend = _make(redis_url)
    clients: list[aredis.Redis] = []

    async def once() -> SessionRecord | None:
        record = await backend.alookup("s")
        clients.append(backend._async_client())
        await backend.aclose()
        return record

    first = asyncio.run(once())
    second = asyncio.run(once())
    assert first is not None
    assert first == second
    assert clients[0] is not clients[1]


async def test_given_sync_client_serves_both_paths(raw: redis.Redis) -> None:
    raw.hset(session_key("s"), mapping={"user_id": "u", "status": "active"})
    # The URL is unusable: only the given client can answer.
    backend = _make(f"redis://127.0.0.1:{free_port()}/0", client=raw)
    assert backend.lookup("s") is not None
    assert await backend.alookup("s") is not None
    await backend.aclose()
    assert raw.ping()  # not closed by the backend


async def test_given_async_client_serves_the_async_path(redis_url: str, raw: redis.Redis) -> None:
    raw.hset(session_key("s"), mapping={"user_id": "u", "status": "active"})
    client = aredis.Redis.from_url(redis_url)
    backend = _make(f"redis://127.0.0.1:{free_port()}/0", client=client)
    try:
        assert await backend.alookup("s") is not None
        with pytest.raises(BackendUnavailable):
            backend.lookup("s")  # the sync path uses the (unusable) URL
        await backend.aclose()
        assert await client.ping()
    finally:
        await client.aclose()


def test_fork_child_builds_its_own_client(redis_url: str, raw: redis.Redis) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    raw.hset(session_key("s"), mapping={"user_id": "u", "status": "active"})
    backend = _make(redis_url)
    assert backend.lookup("s") is not None
    parent_client = backend._sync_client()
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            ok = backend.lookup("s") is not None and backend._sync_client() is not parent_client
            os.write(write_fd, str(ok).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True"
    assert backend.lookup("s") is not None  # the parent's connection still works
    assert backend._sync_client() is parent_client
    backend.close()


# -- management API --------------------------------------------------------------


def test_put_writes_the_documented_layout(backend: RedisBackend, raw: redis.Redis) -> None:
    backend.create_schema()  # no-op
    backend.put(SessionRecord(SID, "u1", SessionStatus.ACTIVE, 100.5, 50.0, {"k": [1]}))
    assert raw.hgetall(KEY_PREFIX + SID) == {
        b"user_id": b"u1",
        b"status": b"active",
        b"expires_at": b"100.5",
        b"issued_at": b"50.0",
        b"data": b'{"k":[1]}',
    }
    backend.put(SessionRecord(SID, "u1", SessionStatus.REVOKED))
    assert raw.hgetall(KEY_PREFIX + SID) == {b"user_id": b"u1", b"status": b"revoked"}


def test_redis_has_no_schema_to_create(backend: RedisBackend, raw: redis.Redis) -> None:
    assert backend.schema_missing() == []
    assert backend.create_schema() == []
    assert raw.dbsize() == 0


def test_management_api(backend: RedisBackend, raw: redis.Redis) -> None:
    a = SessionRecord("a", "alice", SessionStatus.ACTIVE, NOW + 100, NOW, {"k": "v"})
    b = SessionRecord("b", "bob", SessionStatus.ACTIVE)
    c = SessionRecord("c", "alice", SessionStatus.REVOKED)
    for record in (c, b, a):
        backend.put(record)
    raw.set("unrelated:key", "x")
    assert backend.list_sessions() == [a, b, c]
    assert backend.list_sessions(user_id="alice") == [a, c]
    assert len(backend.list_sessions(limit=1)) == 1
    assert backend.list_sessions(limit=0) == []
    assert backend.list_sessions(user_id="nobody") == []
    assert backend.lookup("a") == a

    assert backend.set_status("b", SessionStatus.REVOKED) is True
    got = backend.lookup("b")
    assert got is not None
    assert got.status is SessionStatus.REVOKED
    assert backend.set_status("b", "active") is True
    assert backend.set_status("missing", "revoked") is False
    assert not raw.exists(session_key("missing"))  # no partial hash created
    with pytest.raises(ValueError, match="bogus"):
        backend.set_status("b", "bogus")

    backend.delete("b")
    backend.delete("b")
    assert backend.lookup("b") is None
    assert [r.session_id for r in backend.list_sessions()] == ["a", "c"]


def test_list_sessions_scans_many_and_skips_malformed(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    pipe = raw.pipeline()
    for i in range(1200):
        pipe.hset(session_key(f"s{i:04d}"), mapping={"user_id": f"u{i % 3}", "status": "active"})
    pipe.execute()
    raw.hset(session_key(SID), mapping={"user_id": "u0", "status": "weird"})
    raw.set(session_key("string-key"), "x")
    with capture_logs() as logs:
        found = backend.list_sessions(user_id="u0", limit=10_000)
    assert len(found) == 400
    assert all(r.user_id == "u0" for r in found)
    assert [r.session_id for r in found] == sorted(r.session_id for r in found)
    assert {entry["event"] for entry in logs} == {BACKEND_MALFORMED}
    _no_raw_id(logs)
    assert len(backend.list_sessions(limit=25)) == 25


def test_management_on_unreachable_redis_is_unavailable() -> None:
    backend = _make(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(BackendUnavailable):
        backend.put(SessionRecord(SID, "u", SessionStatus.ACTIVE))
    with pytest.raises(BackendUnavailable):
        backend.list_sessions()
    with pytest.raises(BackendUnavailable) as info:
        backend.set_status(SID, "revoked")
    assert SID not in str(info.value)
    backend.close()
