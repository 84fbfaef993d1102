"""The framework-free core: request verdicts, sharing, the hook's decisions."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from sessionmw import SessionRecord, SessionStatus, Settings
from sessionmw.backends import MemoryBackend
from sessionmw.gate import INVALID, MISSING, UNAVAILABLE, Gate, Rejection, forget_gates, gate_for
from sessionmw.hook import BodyLimit
from sessionmw.signing import new_secret, signed_request
from tests.spec_cases import DownBackend, two_sessions

SECRET = new_secret()


@pytest.fixture
def backend() -> MemoryBackend:
    return two_sessions(
        SessionRecord("gone", "u2", SessionStatus.REVOKED, None, None),
        SessionRecord("old", "u2", SessionStatus.ACTIVE, time.time() - 1, None),
    )


@pytest.fixture
def gate(backend: MemoryBackend) -> Gate:
    return Gate(Settings(backend=backend, invalidation_secret=SECRET, exempt_paths=["/pub"]))


def test_verdicts(gate: Gate) -> None:
    """Valid sessions give the record; everything else one of three fixed rejections."""
    record = gate.check("good")
    assert isinstance(record, SessionRecord)
    assert record.user_id == "u1"
    assert gate.check(None) is MISSING
    for value in ("gone", "old", "nope", "", "a b", "x" * 257, "é"):
        assert gate.check(value) is INVALID, value
    assert gate.check("good", repeated=True) is INVALID
    assert gate.check(None, repeated=True) is INVALID
    assert gate.stats()["allowed"] == 1
    assert gate.stats()["rejected"] == {"missing": 1, "malformed": 6, "unknown": 1, "revoked": 1,
                                        "expired": 1}  # fmt: skip


async def test_async_verdicts_match(gate: Gate) -> None:
    for value in ("good", None, "gone", "old", "nope", "a b"):
        assert (await gate.acheck(value)) == gate.check(value)


def test_backend_down_is_503_but_format_errors_stay_401() -> None:
    gate = Gate(Settings(backend=DownBackend()))
    assert gate.check("anything") is UNAVAILABLE
    assert gate.check("a b") is INVALID
    assert gate.check(None) is MISSING


def test_rejection_bodies_are_fixed() -> None:
    assert json.loads(MISSING.body) == {"error": "missing_session"}
    assert json.loads(INVALID.body) == {"error": "invalid_session"}
    assert json.loads(UNAVAILABLE.body) == {"error": "session_backend_unavailable"}
    assert ("www-authenticate", "DeviceSession") in MISSING.headers
    assert ("retry-after", "1") in UNAVAILABLE.headers
    assert isinstance(INVALID, Rejection)


def test_exempt(gate: Gate) -> None:
    assert gate.exempt("OPTIONS", "/anything")
    assert gate.exempt("GET", "/pub/file")
    assert not gate.exempt("GET", "/private")
    assert not gate.exempt("options", "/private"), "methods are compared as sent (upper case)"


def test_no_raw_id_in_logs(gate: Gate) -> None:
    with capture_logs() as logs:
        gate.check("nope")
        gate.check("gone")
    assert [entry["reason"] for entry in logs] == ["unknown", "revoked"]
    assert "nope" not in repr(logs)
    assert "gone" not in repr(logs)


def test_gate_for_shares_one_gate_per_settings(backend: MemoryBackend) -> None:
    try:
        a = gate_for(Settings(backend=backend))
        assert gate_for(Settings(backend=backend)) is a
        assert gate_for(Settings(backend=backend, ttl=5)) is not a
    finally:
        forget_gates()


def post(gate: Gate, events: list[dict[str, Any]], **kw: Any) -> tuple[int, object]:
    headers, body = signed_request(SECRET, events, **kw)
    assert gate.hook is not None
    response = gate.hook.handle(headers, body)
    return response.status, json.loads(response.body)


def test_hook_revocation_beats_the_backend(gate: Gate, backend: MemoryBackend) -> None:
    """The push path: after a signed revocation the cached session is refused at once."""
    assert isinstance(gate.check("good"), SessionRecord)
    assert post(gate, [{"type": "session_revoked", "session_id": "good"}]) == (200, {"applied": 1})
    assert gate.check("good") is INVALID
    assert backend.lookup("good").status is SessionStatus.ACTIVE  # type: ignore[union-attr]


def test_hook_user_revocation_and_flush(gate: Gate) -> None:
    assert isinstance(gate.check("other"), SessionRecord)
    status, _ = post(gate, [{"type": "user_sessions_revoked", "user_id": "u1"}])
    assert status == 200
    assert gate.check("other") is INVALID
    assert post(gate, [{"type": "flush"}]) == (200, {"applied": 1})
    assert len(gate.cache) == 0


def test_hook_replay_and_all_or_nothing(gate: Gate) -> None:
    events = [{"type": "session_revoked", "session_id": "good"}]
    assert post(gate, events, msg_id="msg_1") == (200, {"applied": 1})
    assert post(gate, events, msg_id="msg_1") == (200, {"applied": 0, "duplicate": True})
    gate.cache.clear()
    mixed = [{"type": "session_revoked", "session_id": "other"}, {"type": "bogus"}]
    assert post(gate, mixed) == (400, {"error": "invalid_payload"})
    assert isinstance(gate.check("other"), SessionRecord), "nothing of a bad batch is applied"


def test_hook_signature_failures(gate: Gate) -> None:
    assert gate.hook is not None
    headers, body = signed_request(SECRET, [{"type": "flush"}])
    for name, value in [
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,!!!"),
        ("webhook-signature", "v1,a,b"),
        ("webhook-timestamp", "nan"),
        ("webhook-timestamp", "1e300"),
        ("webhook-timestamp", str(int(time.time()) - 301)),
        ("webhook-timestamp", str(int(time.time()) + 301)),
        ("webhook-id", ""),
    ]:
        response = gate.hook.handle({**headers, name: value}, body)
        assert response.status == 401, (name, value)
    assert gate.hook.handle(headers, b"\xff" + body).status == 401
    other, _ = signed_request(new_secret(), [{"type": "flush"}])
    assert gate.hook.handle(other, body).status == 401


def test_hook_accepts_any_rotated_secret(backend: MemoryBackend) -> None:
    old, new = new_secret(), new_secret()
    gate = Gate(Settings(backend=backend, invalidation_secret=[new, old]))
    assert gate.hook is not None
    for secret in (old, new):
        headers, body = signed_request(secret, [{"type": "flush"}])
        assert gate.hook.handle(headers, body).status == 200


def test_body_limit() -> None:
    assert BodyLimit("65537").refused
    assert BodyLimit("abc").refused
    assert not BodyLimit("65536").refused
    limit = BodyLimit(None)
    assert limit.feed(b"x" * 65536)
    assert not limit.feed(b"x")
    assert limit.refused
    assert limit.body == b""
