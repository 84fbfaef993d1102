"""SPEC section 8 (hook) as reusable checks, for every adapter that serves the hook.

An adapter's test builds an app with :func:`hook_settings` (the seeded store of
:mod:`tests.spec_cases`, two secrets for rotation, the default hook path) and hands
these checks two callables:

* ``post(headers, body) -> (status, json)``: POST raw ``body`` bytes with
  ``headers`` to the hook (``json`` is the decoded answer, ``None`` if not JSON);
* ``status_of(session_id) -> int``: the status of ``GET /whoami`` with that session.

:data:`SIGNED_CASES` are stateless (each builds its own request); the ``check_*``
functions are stateful scenarios. Method and streaming checks (405, chunked 413)
depend on how a framework is driven, so adapters write those themselves with
:data:`TOO_LARGE_BODY` and the expectations below. Likewise :data:`MALFORMED_LENGTHS`
(malformed ``Content-Length`` values, non-ASCII ones included) need a driver that sets
the raw header; their ASCII ones are in :data:`SIGNED_CASES` too, so ``post`` must
send a given ``content-length`` header as is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sessionmw._body import MAX_BODY
from sessionmw.signing import new_secret, signed_request
from tests.spec_cases import VALID, VALID_NO_EXPIRY, seeded_backend

Post = Callable[[Mapping[str, str], bytes], tuple[int, Any]]
StatusOf = Callable[[str], int]

#: The current secret and the one being rotated out: both must be accepted.
SECRET = new_secret()
OLD_SECRET = new_secret()
HOOK_PATH = "/_internal/session-invalidation"

INVALID_SIGNATURE = {"error": "invalid_signature"}
INVALID_PAYLOAD = {"error": "invalid_payload"}
TOO_LARGE_BODY = b"{" + b" " * (MAX_BODY - 1) + b"}"  # 64 KiB + 1 byte
assert len(TOO_LARGE_BODY) == MAX_BODY + 1

_FLUSH = [{"type": "flush"}]


def hook_settings(backend: Any = None, **extra: Any) -> dict[str, Any]:
    """Keyword settings of a hook test app (a fresh seeded store unless given)."""
    return {
        "backend": seeded_backend() if backend is None else backend,
        "exempt_paths": ["/healthz"],
        "invalidation_secret": [SECRET, OLD_SECRET],
        **extra,
    }


def _signed(events: Any = _FLUSH, secret: str = SECRET, **kw: Any) -> tuple[dict[str, str], bytes]:
    return signed_request(secret, events, **kw)


def _with(changes: Mapping[str, str | None]) -> Callable[[], tuple[dict[str, str], bytes]]:
    """A signed flush whose headers are then changed (None: removed)."""

    def build() -> tuple[dict[str, str], bytes]:
        headers, body = _signed()
        for name, value in changes.items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return headers, body

    return build


def _raw_body(body: bytes) -> Callable[[], tuple[dict[str, str], bytes]]:
    """A correctly signed request whose body is ``body`` exactly (not JSON-encoded)."""

    def build() -> tuple[dict[str, str], bytes]:
        from sessionmw.signing import sign

        msg_id, timestamp = "msg_raw_" + str(time.monotonic_ns()), int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(SECRET, msg_id, timestamp, body),
        }
        return headers, body

    return build


def _stale(seconds: int) -> Callable[[], tuple[dict[str, str], bytes]]:
    return lambda: _signed(timestamp=int(time.time()) + seconds)


@dataclass(frozen=True)
class HookCase:
    name: str
    build: Callable[[], tuple[dict[str, str], bytes]]
    status: int
    body: dict[str, Any] | None


SIGNED_CASES: list[HookCase] = [
    HookCase("valid_current_secret", lambda: _signed(), 200, {"applied": 1}),
    HookCase("valid_rotated_out_secret", lambda: _signed(secret=OLD_SECRET), 200, {"applied": 1}),
    HookCase("unsigned", _with({"webhook-signature": None, "webhook-id": None,
                                "webhook-timestamp": None}), 401, INVALID_SIGNATURE),
    HookCase("no_signature", _with({"webhook-signature": None}), 401, INVALID_SIGNATURE),
    HookCase("no_timestamp", _with({"webhook-timestamp": None}), 401, INVALID_SIGNATURE),
    HookCase("no_id", _with({"webhook-id": None}), 401, INVALID_SIGNATURE),
    HookCase("wrong_secret", lambda: _signed(secret=new_secret()), 401, INVALID_SIGNATURE),
    HookCase("signature_without_comma", _with({"webhook-signature": "v1"}), 401,
             INVALID_SIGNATURE),
    HookCase("signature_bad_base64", _with({"webhook-signature": "v1,!!!not-base64!!!"}), 401,
             INVALID_SIGNATURE),
    HookCase("signature_extra_commas", _with({"webhook-signature": "v1,a,b,c"}), 401,
             INVALID_SIGNATURE),
    HookCase("signature_unknown_version", _with({"webhook-signature": "v9,AAAA"}), 401,
             INVALID_SIGNATURE),
    HookCase("signature_garbage", _with({"webhook-signature": ",, v1, , v2,@@ ,="}), 401,
             INVALID_SIGNATURE),
    HookCase("timestamp_not_a_number", _with({"webhook-timestamp": "yesterday"}), 401,
             INVALID_SIGNATURE),
    HookCase("timestamp_nan", _with({"webhook-timestamp": "nan"}), 401, INVALID_SIGNATURE),
    HookCase("timestamp_absurd", _with({"webhook-timestamp": "1" + "0" * 40}), 401,
             INVALID_SIGNATURE),
    HookCase("timestamp_negative", _with({"webhook-timestamp": "-5"}), 401, INVALID_SIGNATURE),
    HookCase("stale_6_minutes", _stale(-360), 401, INVALID_SIGNATURE),
    HookCase("future_6_minutes", _stale(360), 401, INVALID_SIGNATURE),
    HookCase("stale_4_minutes_ok", _stale(-240), 200, {"applied": 1}),
    HookCase("future_4_minutes_ok", _stale(240), 200, {"applied": 1}),
    # Signed over the raw bytes: a payload problem, not a signature problem.
    HookCase("body_not_utf8", _raw_body(b'{"events": [{"type": "flush"}]}\xff'), 400,
             INVALID_PAYLOAD),
    HookCase("lone_surrogate_id", _raw_body(b'{"events": [{"type": "session_revoked", '
             b'"session_id": "a\\ud800"}]}'), 400, INVALID_PAYLOAD),
    HookCase("before_too_large_for_a_float", _raw_body(
             b'{"events": [{"type": "user_sessions_revoked", "user_id": "u", "before": 1'
             + b"0" * 400 + b"}]}"), 400, INVALID_PAYLOAD),
    HookCase("before_infinite", _raw_body(b'{"events": [{"type": "user_sessions_revoked", '
             b'"user_id": "u", "before": 1e400}]}'), 400, INVALID_PAYLOAD),
    HookCase("webhook_id_too_long", lambda: _signed(msg_id="m" * 5000), 401, INVALID_SIGNATURE),
    HookCase("timestamp_with_sign", _with({"webhook-timestamp": "+1700000000"}), 401,
             INVALID_SIGNATURE),
    HookCase("bad_json", _raw_body(b'{"events": [{"type": "flush"}'), 400, INVALID_PAYLOAD),
    HookCase("not_an_object", _raw_body(b"[1, 2]"), 400, INVALID_PAYLOAD),
    HookCase("no_events", lambda: _signed([]), 400, INVALID_PAYLOAD),
    HookCase("too_many_events", lambda: _signed(_FLUSH * 1001), 400, INVALID_PAYLOAD),
    HookCase("unknown_type", lambda: _signed([{"type": "bogus"}]), 400, INVALID_PAYLOAD),
    HookCase("missing_field", lambda: _signed([{"type": "session_revoked"}]), 400,
             INVALID_PAYLOAD),
    HookCase("deeply_nested", _raw_body(b'{"events": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
             400, INVALID_PAYLOAD),
    HookCase("too_large_signed", _raw_body(TOO_LARGE_BODY), 413, None),
]  # fmt: skip


#: Methods other than POST, registered with a framework or not: 405 with ``Allow: POST``.
OTHER_METHODS = ["TRACE", "PROPFIND", "PATCH", "DELETE", "PUT", "HEAD", "GET", "OPTIONS"]


# -- malformed Content-Length (SPEC section 7: never a 500) ---------------------------


@dataclass(frozen=True)
class LengthCase:
    """A request to the hook whose ``Content-Length`` is ``value`` (as the app sees it:
    a WSGI environ string; on the wire, :func:`length_bytes`)."""

    name: str
    value: str
    status: int  # 400 (invalid_payload: not a plain decimal) or 413 (too large)

    @property
    def body(self) -> dict[str, Any] | None:
        return INVALID_PAYLOAD if self.status == 400 else None


def length_bytes(value: str) -> bytes:
    """``value`` as header bytes: latin-1 (as servers decode them) or, past it, UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


#: Every one is refused before a byte of the body is read: 400 ``invalid_payload`` for a
#: value that is not a plain ASCII decimal (``int()`` would accept several of them), 413
#: for digits beyond the limit (too many for ``int()`` even: it refuses 4,300+ digits).
MALFORMED_LENGTHS: list[LengthCase] = [
    LengthCase("superscript_two", "\u00b2", 400),
    LengthCase("arabic_indic_digits", "\u0661\u0662", 400),
    LengthCase("arabic_indic_as_latin1", "\u0661\u0662".encode().decode("latin-1"), 400),
    LengthCase("fullwidth_digits", "\uff11\uff12", 400),
    LengthCase("thousands_of_digits", "1" * 5000, 413),
    LengthCase("twenty_digits", "9" * 20, 413),
    LengthCase("leading_zeros_then_huge", "0" * 30 + "70000", 413),
    LengthCase("plus_sign", "+5", 400),
    LengthCase("minus_one", "-1", 400),
    LengthCase("inner_space", " 5 5", 400),
    LengthCase("joined_duplicates", "2, 2", 400),
    LengthCase("joined_duplicates_no_space", "2,2", 400),
    LengthCase("hex", "0x10", 400),
    LengthCase("underscore", "1_0", 400),
    LengthCase("exponent", "1e3", 400),
    LengthCase("float", "2.0", 400),
    LengthCase("letters", "abc", 400),
]

_LENGTH_BODY = b"{}"


def _length(value: str) -> Callable[[], tuple[dict[str, str], bytes]]:
    return lambda: ({"content-type": "application/json", "content-length": value}, _LENGTH_BODY)


#: The ASCII ones, as :data:`SIGNED_CASES` entries: ``post`` must send the given
#: ``content-length`` header instead of computing its own.
LENGTH_CASES: list[HookCase] = [
    HookCase(f"content_length_{case.name}", _length(case.value), case.status, case.body)
    for case in MALFORMED_LENGTHS
    if case.value.isascii()
]
SIGNED_CASES += LENGTH_CASES


def run_signed_case(post: Post, case: HookCase) -> None:
    """One :data:`SIGNED_CASES` entry through an adapter."""
    headers, body = case.build()
    status, answer = post(headers, body)
    assert status == case.status, (case.name, status, answer)
    if case.body is not None:
        assert answer == case.body, (case.name, answer)


def revoke(session_id: str, **kw: Any) -> tuple[dict[str, str], bytes]:
    return _signed([{"type": "session_revoked", "session_id": session_id}], **kw)


def check_push_path(post: Post, status_of: StatusOf) -> None:
    """A session the store still reports active is refused right after its revocation."""
    assert status_of(VALID) == 200  # cached now
    assert post(*revoke(VALID)) == (200, {"applied": 1})
    assert status_of(VALID) == 401
    assert status_of(VALID_NO_EXPIRY) == 200, "other sessions are untouched"


def check_replay(post: Post, status_of: StatusOf) -> None:
    """A replayed webhook-id is a duplicate: 200, nothing applied twice."""
    headers, body = revoke(VALID, msg_id=f"msg_replayed_{time.time_ns()}")
    assert post(headers, body) == (200, {"applied": 1})
    assert post(headers, body) == (200, {"applied": 0, "duplicate": True})
    assert status_of(VALID) == 401


def check_all_or_nothing(post: Post, status_of: StatusOf) -> None:
    """A batch with one bad event is refused whole: the good event is not applied."""
    assert status_of(VALID) == 200
    events = [{"type": "session_revoked", "session_id": VALID}, {"type": "bogus"}]
    assert post(*_signed(events)) == (400, INVALID_PAYLOAD)
    assert status_of(VALID) == 200
    missing = [{"type": "session_revoked", "session_id": VALID}, {"type": "session_revoked"}]
    assert post(*_signed(missing)) == (400, INVALID_PAYLOAD)
    assert status_of(VALID) == 200


def check_user_revocation_and_flush(post: Post, status_of: StatusOf) -> None:
    """user_sessions_revoked refuses that user's sessions; flush drops the cache."""
    assert status_of(VALID) == 200
    assert status_of(VALID_NO_EXPIRY) == 200
    # VALID belongs to user-1 and was issued a minute ago: "before" now covers it.
    user = [{"type": "user_sessions_revoked", "user_id": "user-1", "before": time.time()}]
    assert post(*_signed(user)) == (200, {"applied": 1})
    assert status_of(VALID) == 401
    assert status_of(VALID_NO_EXPIRY) == 200
    assert post(*_signed(_FLUSH)) == (200, {"applied": 1})
    assert status_of(VALID_NO_EXPIRY) == 200, "after a flush the store is asked again"


def check_unsigned_changes_nothing(post: Post, status_of: StatusOf) -> None:
    """A revocation with a wrong signature is refused and not applied."""
    assert status_of(VALID) == 200
    headers, body = revoke(VALID, secret=new_secret())
    assert post(headers, body) == (401, INVALID_SIGNATURE)
    assert status_of(VALID) == 200


SCENARIOS: list[Callable[[Post, StatusOf], None]] = [
    check_push_path,
    check_replay,
    check_all_or_nothing,
    check_user_revocation_and_flush,
    check_unsigned_changes_nothing,
]


def decode(body: bytes) -> Any:
    """The JSON of an answer, or None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None
