"""The session record and the one parser every backend uses to build it."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sessionmw._log import BACKEND_MALFORMED, get_logger, hash_id

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: 3000-01-01T00:00:00Z in epoch seconds. A stored time after it is malformed: it is
#: almost certainly milliseconds written by mistake, which would otherwise make a
#: session that never expires.
MAX_EPOCH = 32503680000.0

#: The epoch-seconds fields a store may hold (``last_seen``: section 11); each one
#: present is checked by :func:`build_record`, even those the record does not keep.
TIME_FIELDS = ("expires_at", "issued_at", "last_seen")


class SessionStatus(str, enum.Enum):
    """Status of a device session as the store reports it."""

    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One device session.

    ``expires_at`` and ``issued_at`` are Unix epoch seconds (wall clock), ``None`` when
    the store does not know them. ``data`` holds any extra claims.
    """

    session_id: str
    user_id: str
    status: SessionStatus
    expires_at: float | None = None
    issued_at: float | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def active(self) -> bool:
        return self.status is SessionStatus.ACTIVE

    def expired(self, now: float) -> bool:
        """True when ``expires_at`` is known and not after ``now`` (wall clock)."""
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class StoredSession(SessionRecord):
    """A session as the store holds it (SPEC section 11): the record plus
    ``last_seen`` (epoch seconds of the last request the store heard of) and
    ``idp_sid`` (the identity provider's session it was created for, if any).

    What ``Sessions.create``, ``get`` and ``list`` return; the cache keeps plain
    :class:`SessionRecord` objects, so its memory per entry does not grow.
    """

    last_seen: float | None = None
    idp_sid: str | None = None

    def record(self) -> SessionRecord:
        """The plain record (what the cache holds and the middlewares attach)."""
        return plain(self)


def plain(record: SessionRecord) -> SessionRecord:
    """``record``'s fields as a plain :class:`SessionRecord` (of a subclass a store
    returns: the cache keeps plain records only)."""
    return SessionRecord(
        record.session_id,
        record.user_id,
        record.status,
        record.expires_at,
        record.issued_at,
        record.data,
    )


def newest_first(sessions: list[StoredSession]) -> list[StoredSession]:
    """Sort in place, and return, ``sessions`` as listings show them: ``issued_at``
    descending, unknown ones last, ties by session ID (SQL stores say the same with
    ``ORDER BY issued_at DESC NULLS LAST, session_id``)."""
    sessions.sort(key=lambda s: s.session_id)
    sessions.sort(key=lambda s: (s.issued_at is None, -(s.issued_at or 0.0)))
    return sessions


class MalformedRecord(ValueError):
    """A stored row or document could not be turned into a :class:`SessionRecord`."""


def epoch_time(raw: Mapping[str, Any], key: str) -> float | None:
    """``raw[key]`` as epoch seconds, ``None`` when absent or empty; raises
    :class:`MalformedRecord` for a non-number, a non-finite number or a time after
    3000-01-01 (:data:`MAX_EPOCH`, the problem then says it looks like milliseconds)."""
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedRecord(f"{key} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MalformedRecord(f"{key} is not a number") from None
    if not math.isfinite(number):
        raise MalformedRecord(f"{key} is not finite")
    if number > MAX_EPOCH:
        raise MalformedRecord(
            f"{key} is after 3000-01-01: it looks like milliseconds, not epoch seconds"
        )
    return number


def _data(value: Any) -> Mapping[str, Any]:
    if value is None or value == "":
        return _EMPTY
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise MalformedRecord("data is not valid JSON") from None
    if not isinstance(value, Mapping):
        raise MalformedRecord("data is not a JSON object")
    return MappingProxyType(dict(value))


def build_stored(session_id: str, raw: Mapping[Any, Any]) -> StoredSession:
    """Build a :class:`StoredSession` from a mapping of stored fields (``last_seen``
    and ``idp_sid`` optional); raises :class:`MalformedRecord`.

    Values may be ``str`` or ``bytes`` (Redis hashes) or native JSON types.
    """
    try:
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
    except UnicodeDecodeError:
        raise MalformedRecord("a field is not valid UTF-8") from None
    user_id = fields.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise MalformedRecord("user_id missing or not a string")
    status = fields.get("status")
    try:
        parsed_status = SessionStatus(status)
    except ValueError:
        raise MalformedRecord("status is neither 'active' nor 'revoked'") from None
    times = {key: epoch_time(fields, key) for key in TIME_FIELDS}
    idp_sid = fields.get("idp_sid")
    if idp_sid == "":
        idp_sid = None
    if idp_sid is not None and not isinstance(idp_sid, str):
        raise MalformedRecord("idp_sid is not a string")
    return StoredSession(
        session_id=session_id,
        user_id=user_id,
        status=parsed_status,
        expires_at=times["expires_at"],
        issued_at=times["issued_at"],
        data=_data(fields.get("data")),
        last_seen=times["last_seen"],
        idp_sid=idp_sid,
    )


def build_record(session_id: str, raw: Mapping[Any, Any]) -> SessionRecord:
    """Build a plain record from a mapping of stored fields; raises
    :class:`MalformedRecord` (every field a store may hold is checked, ``last_seen``
    and ``idp_sid`` included, though the record does not keep them).

    Values may be ``str`` or ``bytes`` (Redis hashes) or native JSON types.
    """
    return build_stored(session_id, raw).record()


def _malformed(session_id: str, exc: MalformedRecord, source: str) -> None:
    get_logger().warning(
        BACKEND_MALFORMED, backend=source, session=hash_id(session_id), problem=str(exc)
    )


def record_or_none(session_id: str, raw: Mapping[Any, Any], *, source: str) -> SessionRecord | None:
    """Like :func:`build_record`, but a malformed record is logged and read as unknown."""
    try:
        return build_record(session_id, raw)
    except MalformedRecord as exc:
        _malformed(session_id, exc, source)
        return None


def stored_or_none(session_id: str, raw: Mapping[Any, Any], *, source: str) -> StoredSession | None:
    """Like :func:`build_stored`, but a malformed record is logged and read as unknown."""
    try:
        return build_stored(session_id, raw)
    except MalformedRecord as exc:
        _malformed(session_id, exc, source)
        return None


def lookup_answer(stored: StoredSession | None) -> SessionRecord | None:
    """What a store's ``lookup`` returns for what it holds: the :class:`StoredSession`
    when it carries ``last_seen`` or ``idp_sid``, else the plain record (a row of an
    older layout, or one written without them, reads as it always did)."""
    if stored is None:
        return None
    if stored.last_seen is None and stored.idp_sid is None:
        return stored.record()
    return stored


def latest_touches(items: Iterable[tuple[str, float]]) -> dict[str, float]:
    """``touch_many`` items as one epoch time per session (the latest given);
    ``ValueError`` for a time that is not finite or after 3000-01-01."""
    latest: dict[str, float] = {}
    for session_id, seen in items:
        value = float(seen)
        if not math.isfinite(value) or value > MAX_EPOCH:
            raise ValueError("last_seen must be finite epoch seconds before 3000-01-01")
        if latest.get(session_id, -math.inf) < value:
            latest[session_id] = value
    return latest
