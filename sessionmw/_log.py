"""The library's logger and the hashing used wherever a session ID would be logged."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import structlog

#: Stable event names (tests assert on them with ``structlog.testing.capture_logs``).
SESSION_REJECTED = "session.rejected"
BACKEND_UNAVAILABLE = "session.backend_unavailable"
BACKEND_MALFORMED = "backend.malformed_record"
INVALIDATION_APPLIED = "invalidation.applied"
INVALIDATION_REJECTED = "invalidation.rejected"
BUS_GAP_DETECTED = "bus.gap_detected"
BUS_CONNECTED = "bus.connected"
BUS_DISCONNECTED = "bus.disconnected"
BUS_EVENT_APPLIED = "bus.event_applied"
BUS_BAD_ENTRY = "bus.bad_entry"


def get_logger() -> Any:
    """The ``sessionmw`` logger. Never configured by the library itself."""
    return structlog.get_logger("sessionmw")


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every whole-word occurrence of each secret (a session ID, or its
    URL-quoted form) replaced by ``<session>``: driver messages may quote parameters."""
    for secret in secrets:
        if secret:
            pattern = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
            text = re.sub(pattern, "<session>", text)
    return text


def cause(exc: BaseException, *secrets: str, limit: int = 300) -> str:
    """``"Type: message"`` of an exception for a log line, scrubbed of ``secrets``."""
    text = scrub(str(exc).strip(), *secrets)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def hash_id(value: str) -> str:
    """A short, stable, non-reversible tag for an ID: first 12 hex chars of SHA-256."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


CACHE_STALE_SERVED = "cache.stale_served"
