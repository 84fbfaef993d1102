"""Sessions as Redis hashes, on every Redis URL of SPEC section 12: one server
(``redis://``, ``rediss://``, ``unix://``), Sentinel (``redis+sentinel://``) and
Cluster (``redis+cluster://``).

Key ``sessionmw:session:{session_id}``, fields ``user_id``, ``status``, ``expires_at``,
``issued_at``, ``last_seen`` (optional epoch seconds), ``data`` (optional JSON object)
and ``idp_sid`` (optional); the hash expires at its ``expires_at``. The set
``sessionmw:user:{user_id}`` holds the IDs of a user's sessions and
``sessionmw:idp-sid:{idp_sid}`` those created for an identity-provider session, so
listing one user's sessions never scans the keyspace; an ID whose hash expired or
was deleted is dropped from a set when a read finds it gone.

Hashes written before those sets existed keep answering lookups;
:meth:`RedisBackend.create_schema` (``sessionmw sessions migrate``) backfills the sets
with one ``SCAN`` and records that it ran in the key ``sessionmw:schema``.

Clients are built on first use: one redis-py client for the sync path and one
``redis.asyncio`` client per event loop for the async path (an asyncio connection
belongs to the loop that opened it). A process that forks drops the clients it
inherited and builds its own.

**On a cluster** each session hash lives in the slot of its own key, so sessions
spread over the masters, and the user's and idp-sid's sets usually live elsewhere.
Writes that touch several of those keys cannot be one MULTI/EXEC or one script
there, so they run per key, in an order that keeps every intermediate state safe:

* ``create`` / ``put`` write the hash first (atomically, on its own key), then add
  the ID to the sets. A failure in between leaves a hash no set lists; ``create``
  then raises, so the new session's ID was never handed out.
* ``revoke_user`` reads the user's set, then revokes each session with a script on
  that session's key (each check-and-set stays atomic; the whole is not: a session
  created meanwhile is not revoked, as if it had been created just after).
* ``touch_many`` sends one script call per session, in one pipeline per chunk.

Listing a user's sessions still reads only that user's set and hashes; ``SCAN``
(``create_schema``, ``list_sessions``) walks every master.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.retry import Retry as SyncRetry

from sessionmw import _redis_url
from sessionmw._log import BACKEND_MALFORMED, get_logger, hash_id
from sessionmw._redis_url import REDIS_ERRORS
from sessionmw.backends._clients import Clients
from sessionmw.backends._errors import scrub, within
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import (
    MalformedRecord,
    SessionRecord,
    SessionStatus,
    StoredSession,
    epoch_time,
    latest_touches,
    lookup_answer,
    newest_first,
    stored_or_none,
)

__all__ = [
    "IDP_SID_PREFIX",
    "KEY_PREFIX",
    "SCHEMA_KEY",
    "USER_PREFIX",
    "RedisBackend",
    "idp_sid_key",
    "session_key",
    "user_key",
]

KEY_PREFIX = "sessionmw:session:"
USER_PREFIX = "sessionmw:user:"
IDP_SID_PREFIX = "sessionmw:idp-sid:"
#: Written by :meth:`RedisBackend.create_schema` once it has backfilled the sets.
SCHEMA_KEY = "sessionmw:schema"
SCHEMA_VERSION = "2"
_SOURCE = "redis"
#: Sessions per ``touch_many`` script call.
_TOUCH_CHUNK = 5000
#: Keys per ``SCAN`` step of the one-time migration.
_SCAN_COUNT = 1000

_T = TypeVar("_T")

# Revoke a session only if it is active; never creates a hash.
_REVOKE = """
if redis.call('HGET', KEYS[1], 'status') == 'active' then
  redis.call('HSET', KEYS[1], 'status', 'revoked')
  return 1
end
return 0
"""

# Revoke every active, unexpired session of a user but one, atomically; IDs whose
# hash is gone (or now belongs to another user) leave the user's set.
# KEYS[1] the user's set; ARGV: user_id, now, the ID to keep ('' none), key prefix.
_REVOKE_USER = """
local revoked = {}
local now = tonumber(ARGV[2])
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[4] .. sid
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    redis.call('SREM', KEYS[1], sid)
  elseif kind == 'hash' and sid ~= ARGV[3] then
    local f = redis.call('HMGET', key, 'user_id', 'status', 'expires_at')
    if f[1] ~= ARGV[1] then
      redis.call('SREM', KEYS[1], sid)
    elseif f[2] == 'active' then
      local expires = f[3]
      if not expires or expires == '' or (tonumber(expires) or 0) > now then
        redis.call('HSET', key, 'status', 'revoked')
        revoked[#revoked + 1] = sid
      end
    end
  end
end
return revoked
"""

# Move last_seen forward on the hashes that exist; never creates one.
# KEYS: session hashes; ARGV[i]: the new last_seen of KEYS[i].
_TOUCH = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'hash' then
    local seen = tonumber(redis.call('HGET', key, 'last_seen'))
    if not seen or seen < tonumber(ARGV[i]) then
      redis.call('HSET', key, 'last_seen', ARGV[i])
      n = n + 1
    end
  end
end
return n
"""

# Cluster mode: create a session hash only if its key is free (the sets follow).
# KEYS[1] the hash; ARGV[1] PEXPIREAT milliseconds ('' none), then field, value, ...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
return 1
"""

# Cluster mode: revoke_user for one session, on its own key. ARGV: user_id, now.
# 1 revoked, 0 left as it was, -1 gone or another user's (leaves the user's set).
_REVOKE_ONE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return -1
elseif kind ~= 'hash' then
  return 0
end
local f = redis.call('HMGET', KEYS[1], 'user_id', 'status', 'expires_at')
if f[1] ~= ARGV[1] then
  return -1
end
if f[2] == 'active' then
  local expires = f[3]
  if not expires or expires == '' or (tonumber(expires) or 0) > tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'status', 'revoked')
    return 1
  end
end
return 0
"""

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


def user_key(user_id: str) -> str:
    """The Redis key of the set of a user's session IDs."""
    return USER_PREFIX + user_id


def idp_sid_key(idp_sid: str) -> str:
    """The Redis key of the set of session IDs created for an identity-provider session."""
    return IDP_SID_PREFIX + idp_sid


def _record_fields(record: SessionRecord) -> dict[str, str]:
    fields = {"user_id": record.user_id, "status": SessionStatus(record.status).value}
    if record.expires_at is not None:
        fields["expires_at"] = repr(float(record.expires_at))
    if record.issued_at is not None:
        fields["issued_at"] = repr(float(record.issued_at))
    if record.data:
        fields["data"] = json.dumps(dict(record.data), separators=(",", ":"))
    last_seen = getattr(record, "last_seen", None)
    if last_seen is not None:
        fields["last_seen"] = repr(float(last_seen))
    idp_sid = getattr(record, "idp_sid", None)
    if idp_sid is not None:
        fields["idp_sid"] = idp_sid
    return fields


def _expiry_ms(expires_at: float) -> int:
    """``expires_at`` as the PEXPIREAT argument (milliseconds, rounded up)."""
    return math.ceil(expires_at * 1000)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _ids(members: Iterable[Any]) -> list[str]:
    """Set members as session IDs, sorted (undecodable ones skipped)."""
    return sorted(text for member in members if (text := _text(member)) is not None)


class RedisBackend:
    """Sessions in Redis hashes.

    ``url``: any Redis URL of SPEC section 12 (see :mod:`sessionmw._redis_url`).
    ``client``: an existing client to use instead of one built from ``url``. A sync
    ``redis.Redis`` or ``RedisCluster`` serves both paths (the async one through a
    worker thread); a ``redis.asyncio`` client serves the async path (on the loop it
    belongs to) while the sync path uses a client built from ``url``. The caller
    keeps closing a given client.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, client: Any = None) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError("backend_timeout", f"must be a positive number, got {timeout!r}")
        sync_types = (redis.Redis, _redis_url.RedisCluster)
        async_types = (aredis.Redis, _redis_url.AsyncRedisCluster)
        if client is not None and not isinstance(client, sync_types + async_types):
            raise ConfigError("backend", f"not a redis client: {type(client).__name__}")
        self.url = url
        self.timeout = float(timeout)
        target = _redis_url.parse(url, "backend") if client is None else None
        #: Cluster mode: writes run per key (see the module's docstring).
        self.cluster = (target is not None and target.is_cluster) or (
            _redis_url.is_cluster_client(client)
        )
        # One immediate retry on a dropped connection only (a restarted server, a
        # Sentinel failover that closed every client): never on a timeout, which
        # would overrun backend_timeout.
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
        }
        errors = (RedisConnectionError,)

        def build_sync() -> _redis_url.SyncClient:
            retry = SyncRetry(NoBackoff(), 1, supported_errors=errors)
            return _redis_url.sync_client(target or _redis_url.parse(url), retry=retry, **options)

        def build_async() -> _redis_url.AsyncClient:
            retry = AsyncRetry(NoBackoff(), 1, supported_errors=errors)
            return _redis_url.async_client(target or _redis_url.parse(url), retry=retry, **options)

        self._clients: Clients[_redis_url.SyncClient, _redis_url.AsyncClient] = Clients(
            build_sync,
            build_async,
            given_sync=client if isinstance(client, sync_types) else None,
            given_async=client if isinstance(client, async_types) else None,
        )

    def __repr__(self) -> str:
        return f"<RedisBackend timeout={self.timeout:g}>"

    # -- clients -----------------------------------------------------------------

    def _sync_client(self) -> Any:
        """The sync client: ``redis.Redis``, or ``RedisCluster`` on a cluster."""
        return self._clients.sync()

    def _async_client(self) -> Any:
        """This loop's client: ``redis.asyncio.Redis``, or its ``RedisCluster``."""
        return self._clients.for_loop()

    def close(self) -> None:
        """Close the sync client this backend built. Async clients are closed by
        :meth:`aclose` on their own loop; those left are dropped."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close the async client of the running loop, then the sync client."""
        await self._clients.aclose()

    # -- lookups -----------------------------------------------------------------

    def _unavailable(self, exc: BaseException, *session_ids: str) -> BackendUnavailable:
        text = scrub(str(exc).strip(), *session_ids)
        message = f"Redis backend unavailable: {type(exc).__name__}"
        return BackendUnavailable(f"{message}: {text}" if text else message)

    def _parse(self, session_id: str, raw: Mapping[Any, Any]) -> StoredSession | None:
        if not raw:
            return None
        return stored_or_none(session_id, raw, source=_SOURCE)

    def _wrong_type(self, session_id: str) -> None:
        get_logger().warning(
            BACKEND_MALFORMED,
            backend=_SOURCE,
            session=hash_id(session_id),
            problem="key does not hold a hash",
        )

    def _failed(self, exc: Exception, session_id: str) -> None:
        """A failed read of a session: a key of another type is no session (logged);
        anything else raises :class:`BackendUnavailable`."""
        if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
            self._wrong_type(session_id)
            return
        raise self._unavailable(exc, session_id) from None

    def get(self, session_id: str) -> StoredSession | None:
        """The stored session, or ``None`` (unknown, or malformed: logged)."""
        try:
            raw = self._clients.sync().hgetall(session_key(session_id))
        except REDIS_ERRORS as exc:
            self._failed(exc, session_id)
            return None
        return self._parse(session_id, raw)

    def lookup(self, session_id: str) -> SessionRecord | None:
        return lookup_answer(self.get(session_id))

    async def alookup(self, session_id: str) -> SessionRecord | None:
        if self._clients.sync_only:
            return await within(asyncio.to_thread(self.lookup, session_id), self.timeout, "Redis")
        client = self._clients.for_loop()
        try:
            raw = await within(client.hgetall(session_key(session_id)), self.timeout, "Redis")
        except REDIS_ERRORS as exc:
            self._failed(exc, session_id)
            return None
        return lookup_answer(self._parse(session_id, raw))

    async def aget(self, session_id: str) -> StoredSession | None:
        return await self._off_loop(self.get, session_id)

    async def _off_loop(self, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` on the sync client in a worker thread, bounded by ``timeout``."""
        return await within(asyncio.to_thread(func, *args), self.timeout, "Redis")

    # -- lifecycle (SPEC section 11) ---------------------------------------------

    def create(self, session: StoredSession) -> None:
        """Insert a new session: its hash (expiring at ``expires_at``) and its
        memberships of the user's and the idp-sid's sets, in one MULTI/EXEC.
        ``ValueError`` when the ID is taken (the key is WATCHed). On a cluster: the
        hash first (a script that refuses a taken key), then the sets."""
        key = session_key(session.session_id)
        if self.cluster:
            self._create_per_key(session)
            return
        try:
            with self._clients.sync().pipeline(transaction=True) as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call,unused-ignore]
                if pipe.exists(key):
                    raise ValueError("a session with this ID is already in the store")
                pipe.multi()
                pipe.hset(key, mapping=_record_fields(session))  # type: ignore[arg-type]
                if session.expires_at is not None:
                    pipe.pexpireat(key, _expiry_ms(session.expires_at))
                pipe.sadd(user_key(session.user_id), session.session_id)
                if session.idp_sid is not None:
                    pipe.sadd(idp_sid_key(session.idp_sid), session.session_id)
                pipe.execute()
        except WatchError:
            raise ValueError("a session with this ID is already in the store") from None
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, session.session_id) from None

    def _create_per_key(self, session: StoredSession) -> None:
        expiry = "" if session.expires_at is None else str(_expiry_ms(session.expires_at))
        flat = [item for pair in _record_fields(session).items() for item in pair]
        client = self._clients.sync()
        try:
            created = client.eval(_CREATE, 1, session_key(session.session_id), expiry, *flat)
            if not created:
                raise ValueError("a session with this ID is already in the store")
            self._add_to_sets(client, session.session_id, session.user_id, session.idp_sid)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, session.session_id) from None

    @staticmethod
    def _add_to_sets(
        client: _redis_url.SyncClient, session_id: str, user_id: str, idp_sid: str | None
    ) -> None:
        """Cluster mode: the set memberships, after the hash (a pipeline per node)."""
        pipe = client.pipeline(transaction=False)
        pipe.sadd(user_key(user_id), session_id)
        if idp_sid is not None:
            pipe.sadd(idp_sid_key(idp_sid), session_id)
        pipe.execute()

    async def acreate(self, session: StoredSession) -> None:
        await self._off_loop(self.create, session)

    def _members(self, set_key: str) -> tuple[_redis_url.SyncClient, list[str]]:
        client = self._clients.sync()
        return client, _ids(client.smembers(set_key))

    def list_user(self, user_id: str) -> list[StoredSession]:
        """The user's active, unexpired sessions, newest first: ``SMEMBERS`` of the
        user's set, then one pipelined ``HGETALL`` batch (never a ``SCAN``). IDs whose
        hash is gone (or holds another user's session) leave the set."""
        now = time.time()
        found: list[StoredSession] = []
        set_key = user_key(user_id)
        try:
            client, ids = self._members(set_key)
            if not ids:
                return found
            pipe = client.pipeline(transaction=False)
            for session_id in ids:
                pipe.hgetall(session_key(session_id))
            results = pipe.execute(raise_on_error=False)
            gone: list[str] = []
            for session_id, raw in zip(ids, results, strict=True):
                if isinstance(raw, ResponseError):
                    self._wrong_type(session_id)
                    continue
                stored = self._parse(session_id, raw)
                if not raw or (stored is not None and stored.user_id != user_id):
                    gone.append(session_id)
                elif stored is not None and stored.active and not stored.expired(now):
                    found.append(stored)
            if gone:
                client.srem(set_key, *gone)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from None
        return newest_first(found)

    async def alist_user(self, user_id: str) -> list[StoredSession]:
        return await self._off_loop(self.list_user, user_id)

    def revoke(self, session_id: str) -> bool:
        """Mark the session revoked; ``True`` only if it was active (a script checks
        and sets atomically, and never creates a hash)."""
        client = self._clients.sync()
        try:
            done = client.register_script(_REVOKE)(keys=[session_key(session_id)])
        except REDIS_ERRORS as exc:
            if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
                self._wrong_type(session_id)
                return False
            raise self._unavailable(exc, session_id) from None
        return bool(done)

    async def arevoke(self, session_id: str) -> bool:
        return await self._off_loop(self.revoke, session_id)

    def revoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        """Revoke the user's active, unexpired sessions except ``keep``, atomically
        (one script over the user's set); the IDs it revoked, sorted."""
        client = self._clients.sync()
        args = [user_id, repr(time.time()), keep or "", KEY_PREFIX]
        try:
            if self.cluster:
                return self._revoke_user_per_key(client, user_id, keep)
            revoked = client.register_script(_REVOKE_USER)(keys=[user_key(user_id)], args=args)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, keep or "") from None
        return _ids(revoked)

    def _revoke_user_per_key(
        self, client: _redis_url.SyncClient, user_id: str, keep: str | None
    ) -> list[str]:
        """Cluster mode: the user's set, then one script per session on its own key
        (one pipeline, grouped per node by redis-py)."""
        set_key = user_key(user_id)
        ids = [sid for sid in _ids(client.smembers(set_key)) if sid != keep]
        if not ids:
            return []
        now = repr(time.time())
        pipe = client.pipeline(transaction=False)
        for session_id in ids:
            # ClusterPipeline.eval is refused by redis-py; EVAL through
            # execute_command is routed by its key like any other command.
            pipe.execute_command("EVAL", _REVOKE_ONE, 1, session_key(session_id), user_id, now)
        results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, ResponseError):
                raise result
        gone = [sid for sid, done in zip(ids, results, strict=True) if done == -1]
        if gone:
            client.srem(set_key, *gone)
        return [sid for sid, done in zip(ids, results, strict=True) if done == 1]

    async def arevoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        return await self._off_loop(self.revoke_user, user_id, keep)

    def ids_for_idp_sid(self, idp_sid: str) -> list[str]:
        """The IDs of the sessions created with this identity-provider session (the
        idp-sid set), sorted; IDs whose hash is gone leave the set."""
        set_key = idp_sid_key(idp_sid)
        try:
            client, ids = self._members(set_key)
            if not ids:
                return ids
            pipe = client.pipeline(transaction=False)
            for session_id in ids:
                pipe.exists(session_key(session_id))
            present = pipe.execute()
            gone = [sid for sid, there in zip(ids, present, strict=True) if not there]
            if gone:
                client.srem(set_key, *gone)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from None
        return [sid for sid, there in zip(ids, present, strict=True) if there]

    async def aids_for_idp_sid(self, idp_sid: str) -> list[str]:
        return await self._off_loop(self.ids_for_idp_sid, idp_sid)

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Move ``last_seen`` forward (never back) on the hashes that exist, with one
        script call (one per 5000 sessions); no hash is created. No I/O when empty."""
        latest = list(latest_touches(items).items())
        if not latest:
            return
        client = self._clients.sync()
        touch = client.register_script(_TOUCH)
        try:
            for start in range(0, len(latest), _TOUCH_CHUNK):
                chunk = latest[start : start + _TOUCH_CHUNK]
                if self.cluster:  # the keys span slots: one call per key, one pipeline
                    pipe = client.pipeline(transaction=False)
                    for sid, seen in chunk:
                        pipe.execute_command("EVAL", _TOUCH, 1, session_key(sid), repr(seen))
                    pipe.execute()
                    continue
                touch(
                    keys=[session_key(sid) for sid, _ in chunk],
                    args=[repr(seen) for _, seen in chunk],
                )
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, *(sid for sid, _ in latest)) from None

    async def atouch_many(self, items: Sequence[tuple[str, float]]) -> None:
        await self._off_loop(self.touch_many, items)

    # -- management (CLI) --------------------------------------------------------

    def schema_missing(self) -> list[str]:
        """``[]`` on an empty database or once :meth:`create_schema` has run; else
        the one-time backfill of the per-user and idp-sid sets (and hash expiry) of
        the sessions written before them."""
        try:
            client = self._clients.sync()
            if client.exists(SCHEMA_KEY) or not client.dbsize():
                return []
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from None
        return [f"sets {USER_PREFIX}* and {IDP_SID_PREFIX}* and hash expiry of existing sessions"]

    def create_schema(self) -> list[str]:
        """Backfill, with one ``SCAN`` of the session hashes, the per-user and idp-sid
        sets and the expiry (``PEXPIREAT`` at a future ``expires_at``) of hashes without
        one; then record in ``sessionmw:schema`` that it ran. Never deletes anything;
        what it did, ``[]`` when nothing was missing (an empty database stays empty)."""
        users = idps = expiries = 0
        client = self._clients.sync()
        try:
            for ids in self._scan_sessions(client):
                u, i, e = self._backfill(client, ids)
                users, idps, expiries = users + u, idps + i, expiries + e
            marked = bool(client.exists(SCHEMA_KEY))
            if not marked and client.dbsize():
                client.set(SCHEMA_KEY, SCHEMA_VERSION)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from None
        done = []
        if users:
            done.append(f"added {users} sessions to their user's set {USER_PREFIX}*")
        if idps:
            done.append(f"added {idps} sessions to their idp-sid set {IDP_SID_PREFIX}*")
        if expiries:
            done.append(f"set {expiries} session hashes to expire at their expires_at")
        if done or (not marked and client.exists(SCHEMA_KEY)):
            done.append(f"recorded the layout version in {SCHEMA_KEY}")
        return done

    @staticmethod
    def _scan_sessions(
        client: _redis_url.SyncClient, count: int = _SCAN_COUNT
    ) -> Iterable[list[str]]:
        """The session IDs in the store, in batches of up to ``count``, from ``SCAN``
        (on a cluster: of every master, as redis-py's ``scan_iter`` walks them)."""
        prefix = KEY_PREFIX.encode()
        ids: list[str] = []
        for key in client.scan_iter(match=KEY_PREFIX + "*", count=count):
            raw_key = key if isinstance(key, bytes) else str(key).encode()
            text = _text(raw_key[len(prefix) :])
            if text is not None:
                ids.append(text)
            if len(ids) >= count:
                yield ids
                ids = []
        if ids:
            yield ids

    def _backfill(self, client: _redis_url.SyncClient, ids: list[str]) -> tuple[int, int, int]:
        """Set memberships and expiry for one SCAN step: (user, idp-sid, expiry) counts."""
        read = client.pipeline(transaction=False)
        for session_id in ids:
            key = session_key(session_id)
            read.hmget(key, ["user_id", "idp_sid", "expires_at"])
            read.pttl(key)
        answers = read.execute(raise_on_error=False)
        now = time.time()
        write = client.pipeline(transaction=False)
        kinds: list[str] = []
        for n, session_id in enumerate(ids):
            fields, ttl = answers[2 * n], answers[2 * n + 1]
            if isinstance(fields, ResponseError) or isinstance(ttl, ResponseError):
                continue  # not a hash: no session
            user_id, idp_sid, raw_expiry = (_text(value) for value in fields)
            if user_id:
                write.sadd(user_key(user_id), session_id)
                kinds.append("user")
            if idp_sid:
                write.sadd(idp_sid_key(idp_sid), session_id)
                kinds.append("idp")
            try:
                expires_at = epoch_time({"expires_at": raw_expiry}, "expires_at")
            except MalformedRecord:
                expires_at = None
            if ttl == -1 and expires_at is not None and expires_at > now:
                write.pexpireat(session_key(session_id), _expiry_ms(expires_at))
                kinds.append("expiry")
        if not kinds:
            return 0, 0, 0
        counts = {"user": 0, "idp": 0, "expiry": 0}
        for kind, result in zip(kinds, write.execute(), strict=True):
            counts[kind] += int(result)
        return counts["user"], counts["idp"], counts["expiry"]

    def put(self, record: SessionRecord) -> None:
        """Insert or replace a record (atomically: fields it lacks are removed), with
        its set memberships; the hash expires at ``expires_at`` when that is in the
        future (a record written already expired is kept, to read as expired)."""
        key = session_key(record.session_id)
        idp_sid = getattr(record, "idp_sid", None)
        try:
            client = self._clients.sync()
            # On a cluster the MULTI holds the hash's own key only; the sets follow.
            pipe = client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping=_record_fields(record))  # type: ignore[arg-type]
            if record.expires_at is not None and record.expires_at > time.time():
                pipe.pexpireat(key, _expiry_ms(record.expires_at))
            if self.cluster:
                pipe.execute()
                self._add_to_sets(client, record.session_id, record.user_id, idp_sid)
                return
            pipe.sadd(user_key(record.user_id), record.session_id)
            if idp_sid is not None:
                pipe.sadd(idp_sid_key(idp_sid), record.session_id)
            pipe.execute()
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, record.session_id) from None

    def delete(self, session_id: str) -> None:
        """Remove a record (no error when it does not exist)."""
        try:
            self._clients.sync().delete(session_key(session_id))
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, session_id) from None

    def set_status(self, session_id: str, status: SessionStatus | str) -> bool:
        """Set a session's status; ``False`` when the session does not exist."""
        value = SessionStatus(status).value
        try:
            done = self._clients.sync().eval(_SET_STATUS, 1, session_key(session_id), value)
        except REDIS_ERRORS as exc:
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
        client = self._clients.sync()
        try:
            for ids in self._scan_sessions(client, 500):
                pipe = client.pipeline(transaction=False)
                for session_id in ids:
                    pipe.hgetall(session_key(session_id))
                results = pipe.execute(raise_on_error=False)
                for session_id, raw in zip(ids, results, strict=True):
                    if isinstance(raw, ResponseError):
                        self._wrong_type(session_id)
                        continue
                    record = lookup_answer(self._parse(session_id, raw))
                    if record is None or (user_id is not None and record.user_id != user_id):
                        continue
                    records.append(record)
                    if len(records) >= limit:
                        break
                if len(records) >= limit:
                    break
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, "") from None
        records.sort(key=lambda r: r.session_id)
        return records
