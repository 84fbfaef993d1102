"""Invalidation events: batch validation, the stream wire format, the replay guard."""

from __future__ import annotations

import json

import pytest

from sessionmw.errors import InvalidPayload
from sessionmw.events import (
    MAX_EVENTS,
    Flush,
    SessionRevoked,
    UserSessionsRevoked,
    from_fields,
    parse_batch,
    to_fields,
)
from sessionmw.replay import LocalReplayGuard


def batch(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def test_parse_every_event_type() -> None:
    events = parse_batch(
        batch(
            {"type": "session_revoked", "session_id": "abc"},
            {"type": "user_sessions_revoked", "user_id": "u1", "before": 1767225600.0},
            {"type": "user_sessions_revoked", "user_id": "u2"},
            {"type": "flush"},
        )
    )
    assert events == [
        SessionRevoked("abc"),
        UserSessionsRevoked("u1", 1767225600.0),
        UserSessionsRevoked("u2", None),
        Flush(),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"events": []}',
        b'{"events": {}}',
        b'{"other": 1}',
        batch({"type": "session_revoked"}),
        batch({"type": "session_revoked", "session_id": ""}),
        batch({"type": "session_revoked", "session_id": 12}),
        batch({"type": "user_sessions_revoked"}),
        batch({"type": "user_sessions_revoked", "user_id": "u", "before": "soon"}),
        batch({"type": "user_sessions_revoked", "user_id": "u", "before": True}),
        batch({"type": "nuke"}),
        batch({"session_id": "abc"}),
        batch("flush"),
        batch({"type": "flush"}, {"type": "bogus"}),
        json.dumps({"events": [{"type": "flush"}] * (MAX_EVENTS + 1)}).encode(),
        b"[" * 100_000,
    ],
)
def test_bad_batches_are_rejected_whole(body: bytes) -> None:
    """Any bad event, or a bad envelope, rejects the batch (nothing partial)."""
    with pytest.raises(InvalidPayload):
        parse_batch(body)


def test_largest_batch_is_accepted() -> None:
    assert len(parse_batch(batch(*[{"type": "flush"}] * MAX_EVENTS))) == MAX_EVENTS


@pytest.mark.parametrize(
    "event",
    [SessionRevoked("a.b"), UserSessionsRevoked("u", 12.5), UserSessionsRevoked("u"), Flush()],
)
def test_stream_fields_round_trip(event: object) -> None:
    fields = to_fields(event)  # type: ignore[arg-type]
    assert all(isinstance(v, str) for v in fields.values())
    encoded = {k.encode(): v.encode() for k, v in fields.items()}
    assert from_fields(encoded) == event
    assert from_fields(fields) == event


def test_redis_cli_style_entry_parses() -> None:
    """`XADD ... * type session_revoked session_id abc` gives exactly these fields."""
    assert from_fields({b"type": b"session_revoked", b"session_id": b"abc"}) == SessionRevoked(
        "abc"
    )
    assert from_fields({b"type": b"user_sessions_revoked", b"user_id": b"u", b"before": b"5"}) == (
        UserSessionsRevoked("u", 5.0)
    )
    with pytest.raises(InvalidPayload):
        from_fields({b"type": b"session_revoked", b"session_id": b"\xff"})


def test_replay_guard_remembers_within_window() -> None:
    now = [0.0]
    guard = LocalReplayGuard(window=600, clock=lambda: now[0])
    assert guard.claim("msg_1")
    assert not guard.claim("msg_1")
    now[0] = 599
    assert not guard.claim("msg_1")
    now[0] = 601
    assert guard.claim("msg_1"), "after the window an ID may be used again"
    guard.release("msg_1")
    assert guard.claim("msg_1"), "a released claim can be retried"


def test_replay_guard_is_bounded() -> None:
    guard = LocalReplayGuard(window=600, max_ids=10, clock=lambda: 0.0)
    for i in range(100):
        assert guard.claim(f"m{i}")
    assert len(guard._seen) <= 10
    assert not guard.claim("m99")
