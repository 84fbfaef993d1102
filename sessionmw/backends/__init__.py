"""Session stores, chosen by URL scheme (SPEC section 6).

Every backend offers ``lookup(session_id)`` and ``await alookup(session_id)``, each
returning a :class:`~sessionmw.SessionRecord` or ``None`` for an unknown session, and
raising :class:`~sessionmw.BackendUnavailable` when the store cannot answer. The
async path never blocks the event loop. Service-specific modules are imported only
when their scheme is used, so the core installs without any driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sessionmw._compat import require_extra
from sessionmw.backends.memory import MemoryBackend
from sessionmw.errors import ConfigError
from sessionmw.records import SessionRecord, SessionStatus, StoredSession
from sessionmw.settings import scheme_kind

__all__ = ["Backend", "MemoryBackend", "Store", "backend_from_url"]


@runtime_checkable
class Backend(Protocol):
    """What the cache needs from a session store."""

    def lookup(self, session_id: str) -> SessionRecord | None: ...

    async def alookup(self, session_id: str) -> SessionRecord | None: ...


@runtime_checkable
class Store(Backend, Protocol):
    """A store sessionmw can write to (``memory://``, SQL, Redis): what the
    ``sessionmw sessions`` commands and the demo use. An HTTP auth service owns its
    sessions and is only a :class:`Backend`.

    Every method raises :class:`~sessionmw.BackendUnavailable` when the store
    cannot answer (never with a raw session ID in the message). The lifecycle
    methods (SPEC section 11, what :class:`~sessionmw.Sessions` calls) each have an
    ``a``-prefixed async twin that never blocks the event loop. ``lookup`` returns
    a :class:`~sessionmw.StoredSession` when the row carries ``last_seen`` or
    ``idp_sid``, a plain record otherwise.

    >>> store = backend_from_url("memory://")
    >>> isinstance(store, Store)
    True
    >>> store.put(SessionRecord("s1", "u1", SessionStatus.ACTIVE))
    >>> store.set_status("s1", "revoked"), store.set_status("nope", "revoked")
    (True, False)
    >>> store.create(StoredSession("s2", "u1", SessionStatus.ACTIVE, issued_at=1.0))
    >>> [s.session_id for s in store.list_user("u1")], store.revoke_user("u1")
    (['s2'], ['s2'])
    """

    # -- lifecycle (SPEC section 11) ---------------------------------------------

    def create(self, session: StoredSession) -> None:
        """Insert a new session, every field included (``ValueError`` when its ID is
        already in the store). On Redis the hash expires at ``expires_at`` and the ID
        joins the user's (and the idp-sid's) set in the same MULTI/EXEC. A SQL table
        of the older layout raises BackendUnavailable saying to migrate."""
        ...

    async def acreate(self, session: StoredSession) -> None: ...

    def get(self, session_id: str) -> StoredSession | None:
        """The session as the store holds it, or ``None`` (unknown, or malformed:
        logged, as for :meth:`lookup`)."""
        ...

    async def aget(self, session_id: str) -> StoredSession | None: ...

    def list_user(self, user_id: str) -> list[StoredSession]:
        """The user's active, unexpired sessions, newest first (``issued_at``
        descending, unknown last), at a cost proportional to that user's sessions."""
        ...

    async def alist_user(self, user_id: str) -> list[StoredSession]: ...

    def revoke(self, session_id: str) -> bool:
        """Set the status ``revoked``; ``True`` only if it was active (idempotent)."""
        ...

    async def arevoke(self, session_id: str) -> bool: ...

    def revoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        """Revoke every active, unexpired session of the user except ``keep``; the IDs
        that were active and are now revoked (sorted)."""
        ...

    async def arevoke_user(self, user_id: str, keep: str | None = None) -> list[str]: ...

    def ids_for_idp_sid(self, idp_sid: str) -> list[str]:
        """The IDs of the sessions created with this identity-provider session (any
        status), sorted."""
        ...

    async def aids_for_idp_sid(self, idp_sid: str) -> list[str]: ...

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Write-behind of ``last_seen`` (epoch seconds) for many sessions in one
        statement or one script call: only ever moves it forward, never creates a
        session. No I/O for no items."""
        ...

    async def atouch_many(self, items: Sequence[tuple[str, float]]) -> None: ...

    # -- management (CLI, demo) --------------------------------------------------

    def schema_missing(self) -> list[str]:
        """What :meth:`create_schema` would create (``"table device_sessions"``,
        ``"column device_sessions.last_seen"``, an index, Redis's set backfill), or
        ``[]``; changes nothing."""
        ...

    def create_schema(self) -> list[str]:
        """Create what is missing, never dropping anything; what it did
        (``"created table device_sessions"``, ``"added column …"``), ``[]`` when
        nothing was missing."""
        ...

    def put(self, record: SessionRecord) -> None:
        """Insert or replace a record."""
        ...

    def delete(self, session_id: str) -> None:
        """Remove a record (no error when it does not exist)."""
        ...

    def set_status(self, session_id: str, status: SessionStatus | str) -> bool:
        """Set a session's status; ``False`` when the session does not exist."""
        ...

    def list_sessions(self, user_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Up to ``limit`` records ordered by session ID, optionally of one user."""
        ...

    def close(self) -> None:
        """Release the connections this store opened."""
        ...


def backend_from_url(url: str, *, timeout: float = 2.0, client: Any = None) -> Backend:
    """Build the backend a URL names.

    ``timeout`` is the ``backend_timeout`` setting. ``client`` lets a caller hand in a
    connection it already owns (a SQLAlchemy engine, a redis-py client, an httpx
    client) instead of one built from the URL.

    >>> backend_from_url("memory://")  # doctest: +ELLIPSIS
    <sessionmw.backends.memory.MemoryBackend ...>
    """
    kind = scheme_kind("backend", url)
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        with require_extra("redis", "redis", feature="the redis:// backend"):
            from sessionmw.backends.redis import RedisBackend

        return RedisBackend(url, timeout=timeout, client=client)
    if kind == "http":
        with require_extra("httpx", "http", feature="the http:// backend"):
            from sessionmw.backends.http import HTTPBackend

        return HTTPBackend(url, timeout=timeout, client=client)
    if kind == "sql":
        with require_extra("sqlalchemy", "sql", feature="the SQL backend"):
            from sessionmw.backends.sql import SQLBackend

        return SQLBackend(url, timeout=timeout, engine=client)
    if kind == "django":
        with require_extra("django", "django", feature="the django backend"):
            from sessionmw.backends.django import DjangoBackend

        return DjangoBackend(url, timeout=timeout)
    raise ConfigError("backend", f"no store for {kind!r} URLs")
