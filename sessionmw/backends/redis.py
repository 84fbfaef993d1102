"""Sessions as Redis hashes (``redis://host:port/db``, ``rediss://``, ``unix://``).

Key ``sessionmw:session:{session_id}``, fields ``user_id``, ``status``, ``expires_at``,
``issued_at`` (optional epoch seconds) and ``data`` (optional JSON object).

Clients are built on first use: one redis-py client for the sync path and one
``redis.asyncio`` client per event loop for the async path (an asyncio connection
belongs to the loop that opened it). A process that forks drops the clients it
inherited and builds its own.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry as SyncRetry

from sessionmw._log import BACKEND_MALFORMED, get_logger, hash_id
from sessionmw.backends._clients import Clients
from sessionmw.backends._errors import scrub, within
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import SessionRecord, SessionStatus, record_or_none

__all__ = ["KEY_PREFIX", "RedisBackend", "session_key"]

KEY_PREFIX = "sessionmw:session:"
_SOURCE = "redis"
_FIELDS = ("user_id", "status", "expires_at", "issued_at", "data")

# Set the status only of an existing hash (HSET alone would create a partial one).
_SET_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', ARGV[1])
  return 1
end
return 0
"""


def session_key(session_id: str) -> str:
    """The Redis key of a session's hash."""
    return KEY_PREFIX + session_id


def _record_fields(record: SessionRecord) -> dict[str, str]:
    import json

    fields = {"user_id": record.user_id, "status": SessionStatus(record.status).value}
    if record.expires_at is not None:
        fields["expires_at"] = repr(float(record.expires_at))
    if record.issued_at is not None:
        fields["issued_at"] = repr(float(record.issued_at))
    if record.data:
        fields["data"] = json.dumps(dict(record.data), separators=(",", ":"))
    return fields


class RedisBackend:
    """Sessions in Redis hashes.

    ``client``: an existing client to use instead of one built from ``url``. A sync
    ``redis.Redis`` serves both paths (the async one through a worker thread); a
    ``redis.asyncio.Redis`` serves the async path (on the loop it belongs to) while
    the sync path uses a client built from ``url``. The caller keeps closing a given
    client.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, client: Any = None) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError("backend_timeout", f"must be a positive number, got {timeout!r}")
        if client is not None and not isinstance(client, (redis.Redis, aredis.Redis)):
            raise ConfigError("backend", f"not a redis client: {type(client).__name__}")
        self.url = url
        self.timeout = float(timeout)
        # No retries: a retried timeout would overrun backend_timeout several times over.
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
        }
        self._clients: Clients[redis.Redis, aredis.Redis] = Clients(
            lambda: redis.Redis.from_url(url, retry=SyncRetry(NoBackoff(), 0), **options),
            lambda: aredis.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **options),
            given_sync=client if isinstance(client, redis.Redis) else None,
            given_async=client if isinstance(client, aredis.Redis) else None,
        )
        if client is None:
            self._check_url()

    def _check_url(self) -> None:
        try:
            redis.connection.parse_url(self.url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError("backend", f"not a valid Redis URL: {exc}") from None

    def __repr__(self) -> str:
        return f"<RedisBackend timeout={self.timeout:g}>"

    # -- clients -----------------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        return self._clients.sync()

    def _async_client(self) -> aredis.Redis:
        return self._clients.for_loop()

    def close(self) -> None:
        """Close the sync client this backend built. Async clients are closed by
        :meth:`aclose` on their own loop; those left are dropped."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close the async client of the running loop, then the sync client."""
        await self._clients.aclose()

    # -- lookups -----------------------------------------------------------------

    def _unavailable(self, exc: BaseException, session_id: str) -> BackendUnavailable:
        text = scrub(str(exc).strip(), session_id)
        message = f"Redis backend unavailable: {type(exc).__name__}"
        return BackendUnavailable(f"{message}: {text}" if text else message)

    def _parse(self, session_id: str, raw: Mapping[Any, Any]) -> SessionRecord | None:
        if not raw:
            return None
        return record_or_none(session_id, raw, source=_SOURCE)

    def _wrong_type(self, session_id: str) -> None:
        get_logger().warning(
            BACKEND_MALFORMED,
            backend=_SOURCE,
            session=hash_id(session_id),
            problem="key does not hold a hash",
        )

    def _failed(self, exc: RedisError, session_id: str) -> None:
        """A failed read of a session: a key of another type is no session (logged);
        anything else raises :class:`BackendUnavailable`."""
        if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
            self._wrong_type(session_id)
            return
        raise self._unavailable(exc, session_id) from None

    def lookup(self, session_id: str) -> SessionRecord | None:
        try:
            raw = self._sync_client().hgetall(session_key(session_id))
        except RedisError as exc:
            self._failed(exc, session_id)
            return None
        return self._parse(session_id, raw)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        if self._clients.sync_only:
            return await within(asyncio.to_thread(self.lookup, session_id), self.timeout, "Redis")
        client = self._clients.for_loop()
        try:
            raw = await within(client.hgetall(session_key(session_id)), self.timeout, "Redis")
        except RedisError as exc:
            self._failed(exc, session_id)
            return None
        return self._parse(session_id, raw)

    # -- management (CLI) --------------------------------------------------------

    def create_schema(self) -> None:
        """Nothing to create in Redis."""

    def put(self, record: SessionRecord) -> None:
        """Insert or replace a record (atomically: fields it lacks are removed)."""
        key = session_key(record.session_id)
        try:
            pipe = self._sync_client().pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping=_record_fields(record))  # type: ignore[arg-type]
            pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc, record.session_id) from None

    def delete(self, session_id: str) -> None:
        """Remove a record (no error when it does not exist)."""
        try:
            self._sync_client().delete(session_key(session_id))
        except RedisError as exc:
            raise self._unavailable(exc, session_id) from None

    def set_status(self, session_id: str, status: SessionStatus | str) -> bool:
        """Set a session's status; ``False`` when the session does not exist."""
        value = SessionStatus(status).value
        try:
            done = self._sync_client().eval(_SET_STATUS, 1, session_key(session_id), value)
        except RedisError as exc:
            raise self._unavailable(exc, session_id) from None
        return bool(done)

    def list_sessions(self, user_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Up to ``limit`` records (optionally of one user), found with ``SCAN`` and
        returned sorted by session ID. Malformed hashes are logged and skipped."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        records: list[SessionRecord] = []
        if limit == 0:
            return records
        client = self._sync_client()
        prefix = KEY_PREFIX.encode()
        try:
            cursor: int = 0
            while True:
                cursor, keys = client.scan(cursor, match=KEY_PREFIX + "*", count=500)
                ids: list[str] = []
                for key in keys:
                    raw_key = key if isinstance(key, bytes) else str(key).encode()
                    try:
                        ids.append(raw_key[len(prefix) :].decode())
                    except UnicodeDecodeError:
                        continue
                if ids:
                    pipe = client.pipeline(transaction=False)
                    for session_id in ids:
                        pipe.hgetall(session_key(session_id))
                    results = pipe.execute(raise_on_error=False)
                    for session_id, raw in zip(ids, results, strict=True):
                        if isinstance(raw, ResponseError):
                            self._wrong_type(session_id)
                            continue
                        record = self._parse(session_id, raw)
                        if record is None or (user_id is not None and record.user_id != user_id):
                            continue
                        records.append(record)
                        if len(records) >= limit:
                            break
                if cursor == 0 or len(records) >= limit:
                    break
        except RedisError as exc:
            raise self._unavailable(exc, "") from None
        records.sort(key=lambda r: r.session_id)
        return records
