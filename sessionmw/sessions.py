"""The app side of the session lifecycle (SPEC section 11): login, logout, "log out
everywhere else", the devices page.

``Sessions(settings)`` is the lifecycle of one gate: the same settings give the
same gate, so a revocation made here is applied to the cache the middleware reads
and published on that gate's bus before the call returns. Writes go to the store
first and the event second: if publishing fails the call raises
:class:`~sessionmw.BusUnavailable`, the store is already right, and calling again is
safe.

>>> sessions = Sessions(backend="memory://")
>>> login = sessions.create("u-42")
>>> [s.session_id for s in sessions.list("u-42")] == [login.session_id]
True
>>> sessions.revoke(login.session_id), sessions.revoke(login.session_id)
(True, False)
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sessionmw._log import get_logger, hash_id
from sessionmw.errors import BusUnavailable, ReadOnlyStore
from sessionmw.events import Event, SessionRevoked, UserSessionsRevoked
from sessionmw.gate import Gate, gate_for
from sessionmw.records import SessionStatus, StoredSession
from sessionmw.settings import Settings, SettingsKeywords

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Sessions"]

SESSION_CREATED = "session.created"
SESSION_REVOKED = "session.revoked"


class Sessions:
    """Create, read, list and revoke the sessions of one gate.

    ``settings``: a :class:`~sessionmw.Settings`, a mapping, keyword settings, or the
    :class:`~sessionmw.gate.Gate` itself. Every method has an ``a``-prefixed async
    twin that runs it in a worker thread, so the event loop never blocks.
    """

    def __init__(
        self,
        settings: Settings | Mapping[str, Any] | Gate | None = None,
        /,
        **keywords: Unpack[SettingsKeywords],
    ) -> None:
        if isinstance(settings, Gate):
            self.gate = settings
        else:
            self.gate = gate_for(Settings.coerce(settings, **keywords))
        self.settings = self.gate.settings
        self._log = get_logger()

    def __repr__(self) -> str:
        return f"<Sessions {self.gate.backend!r}>"

    @property
    def store(self) -> Any:
        """The writable store, or :class:`~sessionmw.ReadOnlyStore` for an auth service."""
        backend = self.gate.backend
        if not callable(getattr(backend, "revoke_user", None)):
            raise ReadOnlyStore(
                f"{type(backend).__name__} is read-only here: the auth service owns these "
                "sessions. Create and revoke them there, then push the revocation through "
                "the invalidation hook or the bus (sessionmw revoke --hook/--bus)."
            )
        return backend

    # -- reads -------------------------------------------------------------------

    def get(self, session_id: str) -> StoredSession | None:
        """The session as the store holds it now (not the cache), or ``None``."""
        stored: StoredSession | None = self.store.get(session_id)
        return stored

    def list(self, user_id: str) -> list[StoredSession]:
        """The user's active, unexpired sessions, newest first."""
        listed: builtins.list[StoredSession] = self.store.list_user(user_id)
        return listed

    # -- writes ------------------------------------------------------------------

    def create(
        self,
        user_id: str,
        *,
        data: Mapping[str, Any] | None = None,
        lifetime: float | None = None,
        idp_sid: str | None = None,
    ) -> StoredSession:
        """A new active session for ``user_id``, written to the store.

        ``lifetime``: seconds to ``expires_at`` (default ``session_lifetime``; 0: no
        absolute expiry). With ``max_sessions_per_user``, the user's oldest active
        sessions beyond the limit are then revoked like :meth:`revoke` (a bus failure
        there is logged, not raised: the new session exists and is returned).
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        store = self.store
        now = time.time()
        seconds = self.settings.session_lifetime if lifetime is None else float(lifetime)
        session = StoredSession(
            session_id=secrets.token_urlsafe(32),
            user_id=user_id,
            status=SessionStatus.ACTIVE,
            expires_at=now + seconds if seconds > 0 else None,
            issued_at=now,
            data=dict(data or {}),
            last_seen=now,
            idp_sid=idp_sid,
        )
        store.create(session)
        self._log.info(SESSION_CREATED, session=hash_id(session.session_id))
        limit = self.settings.max_sessions_per_user
        if limit:
            extra = [s.session_id for s in store.list_user(user_id)[limit:]]
            revoked = [sid for sid in extra if sid != session.session_id and store.revoke(sid)]
            if revoked:
                try:
                    self._push([SessionRevoked(sid) for sid in revoked])
                except BusUnavailable as exc:
                    self._log.warning(SESSION_REVOKED, reason="max_sessions", error=str(exc))
        return session

    def revoke(self, session_id: str) -> bool:
        """Revoke one session: store, then this process's cache and the bus.

        Returns whether the session was active. Idempotent: the event is pushed
        every time, so calling again after :class:`~sessionmw.BusUnavailable` is the
        way to finish the job. With a SQL store and a PostgreSQL bus in one database,
        the status and the event are written in one transaction: on
        ``BusUnavailable`` neither was.
        """
        store = self.store
        events: builtins.list[Event] = [SessionRevoked(session_id)]
        write = self._same_transaction(store)
        if write is not None:
            # Status and event commit together (or neither does).
            was_active = bool(store.revoke(session_id, also=lambda conn, _: write(conn, events)))
            self.gate.apply_events(events, source="app")
        else:
            was_active = bool(store.revoke(session_id))
            self._push(events)
        self._log.info(SESSION_REVOKED, session=hash_id(session_id), was_active=was_active)
        return was_active

    def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        """Revoke every active session of the user except ``keep`` ("log out
        everywhere else"); returns how many were active.

        Without ``keep`` a ``user_sessions_revoked`` event is pushed too, so caches
        also refuse sessions of the user that a lagging store replica still shows."""
        store = self.store
        now = time.time()

        def events_for(revoked: builtins.list[str]) -> builtins.list[Event]:
            events: builtins.list[Event] = [SessionRevoked(sid) for sid in revoked]
            if keep is None:
                events.append(UserSessionsRevoked(user_id, now))
            return events

        revoked = self._revoke_many(
            store, events_for, lambda also: store.revoke_user(user_id, keep=keep, also=also)
        )
        if revoked is None:
            revoked = list(store.revoke_user(user_id, keep=keep))
            events = events_for(revoked)
            if events:
                self._push(events)
        self._log.info(SESSION_REVOKED, user=hash_id(user_id), count=len(revoked))
        return len(revoked)

    def revoke_idp_sid(self, idp_sid: str) -> int:
        """Revoke every session created with this identity-provider session."""
        store = self.store

        def events_for(revoked: builtins.list[str]) -> builtins.list[Event]:
            return [SessionRevoked(sid) for sid in revoked]

        done = self._revoke_many(
            store, events_for, lambda also: store.revoke_idp_sid(idp_sid, also=also)
        )
        if done is not None:
            return len(done)
        revoked = [sid for sid in store.ids_for_idp_sid(idp_sid) if store.revoke(sid)]
        if revoked:
            self._push(events_for(revoked))
        return len(revoked)

    def create_schema(self) -> builtins.list[str]:
        """Create what the store lacks (tables, columns, indexes, sets); never drops."""
        created: builtins.list[str] = self.store.create_schema()
        return created

    def _push(self, events: Sequence[Event]) -> None:
        self.gate.apply_events(events, source="app")
        self.gate.bus.publish(events)

    def _same_transaction(self, store: Any) -> Callable[[Any, Sequence[Event]], None] | None:
        """The bus's ``write_events(conn, events)`` when the store's revoking
        transaction can carry the events too: a PostgreSQL bus in the database of a
        SQL store (same host, port, database and user). ``None`` otherwise."""
        bus = self.gate.bus
        write = getattr(bus, "write_events", None)
        same = getattr(bus, "same_database", None)
        if not (callable(write) and callable(same) and hasattr(store, "revoke_idp_sid")):
            return None
        engine = getattr(store, "engine", None)
        url = getattr(engine, "url", None)
        if url is None or not same(url):
            return None
        return write  # type: ignore[no-any-return]

    def _revoke_many(
        self,
        store: Any,
        events_for: Callable[[builtins.list[str]], builtins.list[Event]],
        revoke: Callable[[Any], builtins.list[str]],
    ) -> builtins.list[str] | None:
        """Run ``revoke(also)`` with the events written in its transaction, then apply
        them here; ``None`` (nothing done) when the store and bus cannot share one."""
        write = self._same_transaction(store)
        if write is None:
            return None
        events: builtins.list[Event] = []

        def also(conn: Any, revoked: builtins.list[str]) -> None:
            events[:] = events_for(revoked)
            write(conn, events)

        revoked = list(revoke(also))
        if events:
            self.gate.apply_events(events, source="app")
        return revoked

    # -- async twins -------------------------------------------------------------

    async def aget(self, session_id: str) -> StoredSession | None:
        return await asyncio.to_thread(self.get, session_id)

    async def alist(self, user_id: str) -> builtins.list[StoredSession]:
        return await asyncio.to_thread(self.list, user_id)

    async def acreate(
        self,
        user_id: str,
        *,
        data: Mapping[str, Any] | None = None,
        lifetime: float | None = None,
        idp_sid: str | None = None,
    ) -> StoredSession:
        return await asyncio.to_thread(
            lambda: self.create(user_id, data=data, lifetime=lifetime, idp_sid=idp_sid)
        )

    async def arevoke(self, session_id: str) -> bool:
        return await asyncio.to_thread(self.revoke, session_id)

    async def arevoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        return await asyncio.to_thread(lambda: self.revoke_user(user_id, keep=keep))

    async def arevoke_idp_sid(self, idp_sid: str) -> int:
        return await asyncio.to_thread(self.revoke_idp_sid, idp_sid)
