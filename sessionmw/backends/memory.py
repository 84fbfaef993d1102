"""An in-process store for tests and demos (``memory://``)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Sequence

from sessionmw.records import (
    SessionRecord,
    SessionStatus,
    StoredSession,
    latest_touches,
    lookup_answer,
    newest_first,
)


def _stored(record: SessionRecord) -> StoredSession:
    if isinstance(record, StoredSession):
        return record
    return StoredSession(
        record.session_id,
        record.user_id,
        record.status,
        record.expires_at,
        record.issued_at,
        record.data,
    )


class MemoryBackend:
    """A dict of sessions guarded by a lock. Not shared between processes.

    It is a :class:`~sessionmw.backends.Store`: the same management and lifecycle API
    as the SQL and Redis stores, with no schema to create and nothing to close. The
    async twins answer at once (no I/O). ``lookup`` returns the object stored (a
    :class:`SessionRecord` given to :meth:`put`, a :class:`StoredSession` given to
    :meth:`create`); ``get`` and ``list_user`` always return :class:`StoredSession`.
    """

    def __init__(self, records: Iterable[SessionRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}
        self._by_user: dict[str, set[str]] = {}
        self._by_idp_sid: dict[str, set[str]] = {}
        for record in records:
            self._store(record)

    # Called with the lock held (or before the store is shared).
    def _store(self, session: SessionRecord) -> None:
        old = self._records.get(session.session_id)
        if old is not None:
            self._unindex(old)
        self._records[session.session_id] = session
        self._by_user.setdefault(session.user_id, set()).add(session.session_id)
        idp_sid = getattr(session, "idp_sid", None)
        if idp_sid is not None:
            self._by_idp_sid.setdefault(idp_sid, set()).add(session.session_id)

    def _unindex(self, session: SessionRecord) -> None:
        idp_sid = getattr(session, "idp_sid", None)
        for index, key in ((self._by_user, session.user_id), (self._by_idp_sid, idp_sid)):
            if key is None:
                continue
            ids = index.get(key)
            if ids is not None:
                ids.discard(session.session_id)
                if not ids:
                    del index[key]

    def put(self, record: SessionRecord) -> None:
        with self._lock:
            self._store(record)

    def delete(self, session_id: str) -> None:
        with self._lock:
            old = self._records.pop(session_id, None)
            if old is not None:
                self._unindex(old)

    def lookup(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)

    def __len__(self) -> int:
        return len(self._records)

    # -- lifecycle (SPEC section 11) ---------------------------------------------

    def create(self, session: StoredSession) -> None:
        """Insert a new session; ``ValueError`` when its ID is taken."""
        with self._lock:
            if session.session_id in self._records:
                raise ValueError("a session with this ID is already in the store")
            # What lookup returns, as on the other stores: the plain record when the
            # session carries neither last_seen nor idp_sid.
            self._store(lookup_answer(session) or session)

    async def acreate(self, session: StoredSession) -> None:
        self.create(session)

    def get(self, session_id: str) -> StoredSession | None:
        record = self._records.get(session_id)
        return None if record is None else _stored(record)

    async def aget(self, session_id: str) -> StoredSession | None:
        return self.get(session_id)

    def list_user(self, user_id: str) -> list[StoredSession]:
        """The user's active, unexpired sessions, newest first."""
        now = time.time()
        with self._lock:
            found = [_stored(self._records[sid]) for sid in self._by_user.get(user_id, ())]
        return newest_first([s for s in found if s.active and not s.expired(now)])

    async def alist_user(self, user_id: str) -> list[StoredSession]:
        return self.list_user(user_id)

    def _revoke(self, session_id: str) -> bool:
        # Called with the lock held.
        session = self._records.get(session_id)
        if session is None or not session.active:
            return False
        self._records[session_id] = dataclasses.replace(session, status=SessionStatus.REVOKED)
        return True

    def revoke(self, session_id: str) -> bool:
        """Mark the session revoked; ``True`` only if it was active."""
        with self._lock:
            return self._revoke(session_id)

    async def arevoke(self, session_id: str) -> bool:
        return self.revoke(session_id)

    def revoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        """Revoke the user's active, unexpired sessions except ``keep``; their IDs."""
        now = time.time()
        with self._lock:
            targets = sorted(
                sid
                for sid in self._by_user.get(user_id, ())
                if sid != keep and not self._records[sid].expired(now)
            )
            return [sid for sid in targets if self._revoke(sid)]

    async def arevoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        return self.revoke_user(user_id, keep)

    def ids_for_idp_sid(self, idp_sid: str) -> list[str]:
        """The IDs of the sessions created with this identity-provider session."""
        with self._lock:
            return sorted(self._by_idp_sid.get(idp_sid, ()))

    async def aids_for_idp_sid(self, idp_sid: str) -> list[str]:
        return self.ids_for_idp_sid(idp_sid)

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Move ``last_seen`` forward for the sessions that exist."""
        if not items:
            return
        latest = latest_touches(items)
        with self._lock:
            for session_id, seen in latest.items():
                session = self._records.get(session_id)
                if session is None:
                    continue
                stored = _stored(session)
                if stored.last_seen is None or stored.last_seen < seen:
                    self._records[session_id] = dataclasses.replace(stored, last_seen=seen)

    async def atouch_many(self, items: Sequence[tuple[str, float]]) -> None:
        self.touch_many(items)

    # -- management (the same API as the SQL and Redis stores) ------------------

    def schema_missing(self) -> list[str]:
        """Nothing: a dict needs no schema."""
        return []

    def create_schema(self) -> list[str]:
        """Nothing to create."""
        return []

    def set_status(self, session_id: str, status: SessionStatus | str) -> bool:
        """Set a session's status; ``False`` when the session does not exist."""
        value = SessionStatus(status)
        with self._lock:
            record = self._records.get(session_id)
            if record is None:
                return False
            self._records[session_id] = dataclasses.replace(record, status=value)
            return True

    def list_sessions(self, user_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Records ordered by session ID, optionally of one user."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        with self._lock:
            records = [r for r in self._records.values() if user_id in (None, r.user_id)]
        records.sort(key=lambda r: r.session_id)
        return records[:limit]

    def close(self) -> None:
        """Nothing to release (the records stay)."""
