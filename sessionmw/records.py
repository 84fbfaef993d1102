"""The session record and the one parser every backend uses to build it."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sessionmw._log import BACKEND_MALFORMED, get_logger, hash_id

_EMPTY: Mapping[str, Any] = MappingProxyType({})


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


class MalformedRecord(ValueError):
    """A stored row or document could not be turned into a :class:`SessionRecord`."""


def _opt_time(raw: Mapping[str, Any], key: str) -> float | None:
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


def build_record(session_id: str, raw: Mapping[Any, Any]) -> SessionRecord:
    """Build a record from a mapping of stored fields; raises :class:`MalformedRecord`.

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
    return SessionRecord(
        session_id=session_id,
        user_id=user_id,
        status=parsed_status,
        expires_at=_opt_time(fields, "expires_at"),
        issued_at=_opt_time(fields, "issued_at"),
        data=_data(fields.get("data")),
    )


def record_or_none(session_id: str, raw: Mapping[Any, Any], *, source: str) -> SessionRecord | None:
    """Like :func:`build_record`, but a malformed record is logged and read as unknown."""
    try:
        return build_record(session_id, raw)
    except MalformedRecord as exc:
        get_logger().warning(
            BACKEND_MALFORMED, backend=source, session=hash_id(session_id), problem=str(exc)
        )
        return None
