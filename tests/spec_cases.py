"""SPEC section 7 as data: one table every adapter's tests run through.

Each adapter test builds an app with ``settings_for(backend)`` whose ``GET /whoami``
returns ``{"user_id": ..., "session_id": ...}`` from the record the adapter attached
and whose ``GET /healthz`` returns ``ok``, then sends every :data:`CASES` request and
compares status, body and headers. The same inputs must give the same answers
everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus
from sessionmw.backends import MemoryBackend

HEADER = "X-Device-Session-ID"
VALID = "s-valid.user1~A+b/c=d_e-f"
VALID_NO_EXPIRY = "s-forever"
REVOKED = "s-revoked"
EXPIRED = "s-expired"
UNKNOWN = "s-unknown"

MISSING_BODY = {"error": "missing_session"}
INVALID_BODY = {"error": "invalid_session"}
UNAVAILABLE_BODY = {"error": "session_backend_unavailable"}


def seeded_backend() -> MemoryBackend:
    now = time.time()
    return MemoryBackend(
        [
            SessionRecord(VALID, "user-1", SessionStatus.ACTIVE, now + 3600, now - 60),
            SessionRecord(VALID_NO_EXPIRY, "user-2", SessionStatus.ACTIVE, None, None),
            SessionRecord(REVOKED, "user-1", SessionStatus.REVOKED, now + 3600, now - 60),
            SessionRecord(EXPIRED, "user-3", SessionStatus.ACTIVE, now - 1, now - 3600),
        ]
    )


def two_sessions(*extra: SessionRecord) -> MemoryBackend:
    """A store with user ``u1``'s sessions ``good`` (expires in a minute) and ``other``
    (no expiry), plus ``extra``."""
    now = time.time()
    return MemoryBackend(
        [
            SessionRecord("good", "u1", SessionStatus.ACTIVE, now + 60, now - 60),
            SessionRecord("other", "u1", SessionStatus.ACTIVE, None, now - 60),
            *extra,
        ]
    )


class DownBackend:
    """A store that never answers."""

    def lookup(self, session_id: str) -> SessionRecord | None:
        raise BackendUnavailable("store is down")

    async def alookup(self, session_id: str) -> SessionRecord | None:
        raise BackendUnavailable("store is down")


def settings_for(backend: Any, **extra: Any) -> dict[str, Any]:
    """Keyword settings of the table's app."""
    return {"backend": backend, "exempt_paths": ["/healthz"], **extra}


PASSED = -1  # the request reached the app; its own answer is not the gate's business


@dataclass(frozen=True)
class Case:
    name: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 401
    body: dict[str, Any] | str | None = None
    method: str = "GET"
    path: str = "/whoami"
    expect_headers: dict[str, str] = field(default_factory=dict)
    down: bool = False  # run against DownBackend instead of the seeded store


class Result(NamedTuple):
    """What an adapter answered to a :class:`Case`."""

    status: int
    body: bytes
    headers: dict[str, str]  # lower-cased names


_AUTH = {"www-authenticate": "DeviceSession"}

CASES: list[Case] = [
    Case("valid", [(HEADER, VALID)], 200, {"user_id": "user-1", "session_id": VALID}),
    Case("valid_no_expiry", [(HEADER, VALID_NO_EXPIRY)], 200,
         {"user_id": "user-2", "session_id": VALID_NO_EXPIRY}),
    Case("header_name_any_case", [(HEADER.lower(), VALID)], 200,
         {"user_id": "user-1", "session_id": VALID}),
    Case("missing", [], 401, MISSING_BODY, expect_headers=_AUTH),
    Case("other_header_only", [("X-Other", VALID)], 401, MISSING_BODY, expect_headers=_AUTH),
    Case("unknown", [(HEADER, UNKNOWN)], 401, INVALID_BODY, expect_headers=_AUTH),
    Case("revoked", [(HEADER, REVOKED)], 401, INVALID_BODY),
    Case("expired", [(HEADER, EXPIRED)], 401, INVALID_BODY),
    Case("empty", [(HEADER, "")], 401, INVALID_BODY),
    Case("too_long", [(HEADER, "a" * 257)], 401, INVALID_BODY),
    Case("longest_allowed_unknown", [(HEADER, "a" * 256)], 401, INVALID_BODY),
    Case("space_inside", [(HEADER, "abc def")], 401, INVALID_BODY),
    Case("semicolon", [(HEADER, "abc;def")], 401, INVALID_BODY),
    Case("comma_joined", [(HEADER, f"{VALID},{VALID}")], 401, INVALID_BODY),
    Case("repeated", [(HEADER, VALID), (HEADER, VALID)], 401, INVALID_BODY),
    Case("repeated_other_case", [(HEADER, VALID), (HEADER.lower(), UNKNOWN)], 401, INVALID_BODY),
    Case("percent_encoded", [(HEADER, "abc%20def")], 401, INVALID_BODY),
    Case("exempt_path", [], 200, "ok", path="/healthz"),
    Case("exempt_path_with_bad_header", [(HEADER, "x y")], 200, "ok", path="/healthz"),
    Case("exempt_method", [], PASSED, None, method="OPTIONS"),
    # exempt_paths match at segment boundaries: "/healthz" exempts "/healthz/..." only.
    Case("exempt_path_below", [], PASSED, None, path="/healthz/deep"),
    Case("exempt_path_below_with_bad_header", [(HEADER, "x y")], PASSED, None,
         path="/healthz/deep/er"),
    Case("exempt_prefix_not_a_segment", [], 401, MISSING_BODY, path="/healthzz",
         expect_headers=_AUTH),
    Case("exempt_prefix_dash", [], 401, MISSING_BODY, path="/healthz-admin",
         expect_headers=_AUTH),
    Case("exempt_prefix_not_a_segment_bad_header", [(HEADER, "x y")], 401, INVALID_BODY,
         path="/healthzz"),
    # Routed or not, every other path is checked: no route map for unauthenticated clients.
    Case("unrouted_missing", [], 401, MISSING_BODY, path="/no/such/route",
         expect_headers=_AUTH),
    Case("unrouted_unknown", [(HEADER, UNKNOWN)], 401, INVALID_BODY, path="/no/such/route"),
    Case("unrouted_post_missing", [], 401, MISSING_BODY, method="POST", path="/nowhere"),
    Case("unrouted_trailing_slash", [], 401, MISSING_BODY, path="/whoami/"),
    Case("unrouted_valid_passes", [(HEADER, VALID)], PASSED, None, path="/no/such/route"),
    Case("backend_down", [(HEADER, VALID)], 503, UNAVAILABLE_BODY,
         expect_headers={"retry-after": "1"}, down=True),
    Case("backend_down_malformed_first", [(HEADER, "a b")], 401, INVALID_BODY, down=True),
    Case("backend_down_missing", [], 401, MISSING_BODY, down=True),
]  # fmt: skip

#: Cases a raw-bytes client can send (non-ASCII header bytes, latin-1 decoded by servers).
RAW_CASES: list[Case] = [
    Case("latin1_bytes", [(HEADER, "s-valid\xe9")], 401, INVALID_BODY),
]
