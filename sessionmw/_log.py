"""The library's logger and the hashing used wherever a session ID would be logged."""

from __future__ import annotations

import hashlib
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


def hash_id(value: str) -> str:
    """A short, stable, non-reversible tag for an ID: first 12 hex chars of SHA-256."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


CACHE_STALE_SERVED = "cache.stale_served"
