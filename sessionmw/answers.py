"""Every fixed answer sessionmw sends, encoded once (SPEC sections 7 and 8).

The gate's rejections and the hook's answers share one shape, :class:`Answer`:
status, JSON body bytes, headers and a short machine code. Adapters turn an
``Answer`` into their framework's response; none of them builds a body itself, so
every adapter answers byte for byte alike.
"""

from __future__ import annotations

import json
from typing import NamedTuple

__all__ = [
    "BUS_UNAVAILABLE",
    "DUPLICATE",
    "INVALID",
    "INVALID_PAYLOAD",
    "INVALID_SIGNATURE",
    "METHOD_NOT_ALLOWED",
    "MISSING",
    "TOO_LARGE",
    "UNAVAILABLE",
    "Answer",
    "applied",
]

_JSON = ("content-type", "application/json")


class Answer(NamedTuple):
    """A complete response: ``status``, ``body`` (JSON bytes), ``headers`` and the
    machine ``code`` (the ``error`` member of the body, or ``"ok"``)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    code: str

    @property
    def text(self) -> str:
        return self.body.decode()


def error(status: int, code: str, *extra: tuple[str, str]) -> Answer:
    """``{"error": code}`` with ``status`` and any extra headers."""
    return Answer(status, json.dumps({"error": code}).encode(), (_JSON, *extra), code)


def applied(count: int) -> Answer:
    """The hook's success: ``{"applied": count}``."""
    return Answer(200, b'{"applied": %d}' % count, (_JSON,), "ok")


_CHALLENGE = ("www-authenticate", "DeviceSession")

# -- the session check (section 7) ---------------------------------------------------
MISSING = error(401, "missing_session", _CHALLENGE)
#: One answer for unknown, revoked, expired and malformed: the reason is only logged.
INVALID = error(401, "invalid_session", _CHALLENGE)
UNAVAILABLE = error(503, "session_backend_unavailable", ("retry-after", "1"))

# -- the invalidation hook (section 8) -----------------------------------------------
METHOD_NOT_ALLOWED = error(405, "method_not_allowed", ("allow", "POST"))
TOO_LARGE = error(413, "payload_too_large")
INVALID_SIGNATURE = error(401, "invalid_signature")
INVALID_PAYLOAD = error(400, "invalid_payload")
BUS_UNAVAILABLE = error(503, "bus_unavailable", ("retry-after", "1"))
DUPLICATE = Answer(200, json.dumps({"applied": 0, "duplicate": True}).encode(), (_JSON,), "ok")
