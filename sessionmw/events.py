"""Invalidation events (SPEC section 8): parsing, the stream wire format, applying.

Three event types exist. They arrive as JSON objects through the hook, or as flat
string fields of a Redis Stream entry through the bus; both paths end in
:func:`apply_event`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sessionmw.errors import InvalidPayload

if TYPE_CHECKING:
    from sessionmw.cache import MemoryCache

MAX_EVENTS = 1000
_MAX_ID = 1024


@dataclass(frozen=True, slots=True)
class SessionRevoked:
    session_id: str
    type = "session_revoked"


@dataclass(frozen=True, slots=True)
class UserSessionsRevoked:
    user_id: str
    before: float | None = None
    type = "user_sessions_revoked"


@dataclass(frozen=True, slots=True)
class Flush:
    type = "flush"


Event = SessionRevoked | UserSessionsRevoked | Flush


def _id(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise InvalidPayload(f"{key} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no store or bus can hold it
        raise InvalidPayload(f"{key} is not valid Unicode text") from None
    return value


def _before(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidPayload("before must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidPayload("before must be a number of epoch seconds") from None
    if not math.isfinite(number):
        raise InvalidPayload("before must be finite")
    return number


def parse_event(obj: Any) -> Event:
    """One event from a decoded JSON object or a stream entry's fields."""
    if not isinstance(obj, Mapping):
        raise InvalidPayload("an event must be an object")
    kind = obj.get("type")
    if kind == "session_revoked":
        return SessionRevoked(_id(obj, "session_id"))
    if kind == "user_sessions_revoked":
        return UserSessionsRevoked(_id(obj, "user_id"), _before(obj.get("before")))
    if kind == "flush":
        return Flush()
    raise InvalidPayload("unknown event type")


def parse_batch(body: bytes) -> list[Event]:
    """The hook's body ``{"events": [...]}``: all events valid, or InvalidPayload."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidPayload("body is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidPayload("body must be an object")
    events = document.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise InvalidPayload(f"events must be a list of 1 to {MAX_EVENTS} events")
    return [parse_event(item) for item in events]


def received(events: Sequence[Event], now: float) -> list[Event]:
    """The batch as received at ``now`` (epoch seconds): a ``user_sessions_revoked``
    without ``before``, or with one later than ``now``, revokes up to ``now``, so no
    event can revoke logins that happen after it reached us."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, UserSessionsRevoked) and (event.before is None or event.before > now):
            event = UserSessionsRevoked(event.user_id, now)
        out.append(event)
    return out


def to_json(event: Event) -> dict[str, Any]:
    """The event as the hook's JSON object."""
    if isinstance(event, SessionRevoked):
        return {"type": event.type, "session_id": event.session_id}
    if isinstance(event, UserSessionsRevoked):
        out: dict[str, Any] = {"type": event.type, "user_id": event.user_id}
        if event.before is not None:
            out["before"] = event.before
        return out
    return {"type": event.type}


def to_fields(event: Event) -> dict[str, str]:
    """The flat string fields of a stream entry (what ``redis-cli XADD`` would write)."""
    if isinstance(event, SessionRevoked):
        return {"type": event.type, "session_id": event.session_id}
    if isinstance(event, UserSessionsRevoked):
        fields = {"type": event.type, "user_id": event.user_id}
        if event.before is not None:
            fields["before"] = repr(event.before)
        return fields
    return {"type": event.type}


def from_fields(fields: Mapping[Any, Any]) -> Event:
    """Parse a stream entry's fields (bytes or str); raises InvalidPayload."""
    decoded: dict[str, str] = {}
    try:
        for key, value in fields.items():
            k = key.decode() if isinstance(key, bytes) else key
            decoded[k] = value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        raise InvalidPayload("entry fields are not UTF-8") from None
    return parse_event(decoded)


def apply_event(cache: MemoryCache, event: Event) -> None:
    """Apply one event to a cache. Never touches the backend."""
    if isinstance(event, SessionRevoked):
        cache.mark_revoked(event.session_id)
    elif isinstance(event, UserSessionsRevoked):
        cache.mark_user_revoked(event.user_id, before=event.before)
    else:
        cache.clear()


def describe(events: Sequence[Event]) -> dict[str, int]:
    """Count of events by type, for log lines (no IDs)."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type] = counts.get(event.type, 0) + 1
    return counts
