"""The framework-free core: request verdicts, sharing, the hook's decisions."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import sessionmw.hook
from sessionmw import SessionRecord, SessionStatus, Settings
from sessionmw._body import BodyLimit
from sessionmw.answers import Answer
from sessionmw.backends import MemoryBackend
from sessionmw.cache import MemoryCache
from sessionmw.events import Flush, SessionRevoked, UserSessionsRevoked
from sessionmw.gate import INVALID, MISSING, UNAVAILABLE, Gate, forget_gates, gate_for
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
    assert isinstance(INVALID, Answer)
    assert (MISSING.code, INVALID.code, UNAVAILABLE.code) == (
        "missing_session", "invalid_session", "session_backend_unavailable")  # fmt: skip


def test_reject_counts_logs_and_returns_the_answer(gate: Gate) -> None:
    """Adapters refuse through the gate too (e.g. a repeated header), counted alike."""
    with capture_logs() as logs:
        assert gate.reject(INVALID, "repeated", "secret-id") is INVALID
        assert gate.reject(MISSING, "missing") is MISSING
    assert gate.stats()["rejected"] == {"repeated": 1, "missing": 1}
    assert [entry["reason"] for entry in logs] == ["repeated", "missing"]
    assert "session" in logs[0]
    assert "session" not in logs[1]
    assert "secret-id" not in repr(logs)


def test_allowed_counts_fast_hits_and_full_checks(gate: Gate) -> None:
    assert gate.hit("good") is None  # not cached yet: the adapter takes the full path
    assert gate.hit(None) is None
    assert isinstance(gate.check("good"), SessionRecord)
    assert gate.allowed == 1
    record = gate.hit("good")
    assert record is not None
    assert record.user_id == "u1"
    assert gate.hit("gone") is None
    assert gate.allowed == 2
    assert gate.stats()["allowed"] == 2


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
        ("webhook-timestamp", str(int(time.time()) - 330)),
        ("webhook-timestamp", str(int(time.time()) + 330)),
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


def test_body_limit_refusals_are_answers() -> None:
    too_large, malformed = BodyLimit("65537"), BodyLimit("+5")
    assert too_large.refusal is not None
    assert too_large.refusal.status == 413
    assert malformed.refusal is not None
    assert malformed.refusal.status == 400
    assert (too_large.declared, malformed.declared) == (None, None)
    ok = BodyLimit("12")
    assert (ok.refusal, ok.refused, ok.declared) == (None, False, 12)
    assert not ok.feed(b"x" * 65537)
    assert ok.refusal is not None
    assert ok.refusal.status == 413


# -- the gate as the bus's sink ----------------------------------------------------


def test_bus_event_applies_and_feeds_the_revocation_lag(gate: Gate) -> None:
    assert isinstance(gate.check("good"), SessionRecord)
    assert isinstance(gate.check("other"), SessionRecord)
    gate.bus_event(SessionRevoked("good"), time.time() - 0.5)
    assert gate.check("good") is INVALID
    assert isinstance(gate.check("other"), SessionRecord)
    gate.bus_event(UserSessionsRevoked("u1"), None)  # no publication time: no lag
    assert gate.check("other") is INVALID
    lag = gate.revocation_lag.snapshot()
    assert lag.count == 1
    assert 0.5 <= lag.sum < 5
    gate.bus_event(SessionRevoked("nope"), time.time() + 60)  # a clock ahead of ours: 0
    lag = gate.revocation_lag.snapshot()
    assert lag.count == 2
    assert lag.counts[0] == 1
    assert gate.stats()["events_applied"] == {"session_revoked": 2, "user_sessions_revoked": 1}


def test_bus_disconnected_sets_the_outage_max_age_and_connected_clears_it(
    backend: MemoryBackend,
) -> None:
    calls: list[float | None] = []
    gate = Gate(Settings(backend=backend, bus_outage_ttl=3))
    real = gate.cache.set_max_age

    def set_max_age(seconds: float | None) -> None:
        calls.append(seconds)
        real(seconds)

    gate.cache.set_max_age = set_max_age  # type: ignore[method-assign]
    gate.bus_disconnected()
    assert calls == [3]
    gate.bus_connected()
    assert calls == [3, None]


def test_outage_max_age_rechecks_older_records(backend: MemoryBackend) -> None:
    """While disconnected, a record cached longer ago than bus_outage_ttl is looked up
    again (and a revocation the bus could not deliver is seen)."""
    clock = [1000.0]
    cache = MemoryCache(backend, clock=lambda: clock[0])
    gate = Gate(Settings(backend=backend, bus_outage_ttl=3), cache=cache)
    assert isinstance(gate.check("good"), SessionRecord)
    backend.put(SessionRecord("good", "u1", SessionStatus.REVOKED, None, None))
    gate.bus_disconnected()
    clock[0] += 2
    assert isinstance(gate.check("good"), SessionRecord), "younger than the outage TTL"
    clock[0] += 2
    assert gate.check("good") is INVALID, "older than the outage TTL: re-checked"
    backend.put(SessionRecord("good", "u1", SessionStatus.ACTIVE, None, None))
    gate.bus_connected()
    assert gate.check("good") is INVALID, "connected: cached for the full TTL again"


def test_bus_gap_clears_the_cache(gate: Gate) -> None:
    for value in ("good", "other", "nope"):
        gate.check(value)
    assert len(gate.cache) == 3
    gate.bus_gap("trimmed")
    assert len(gate.cache) == 0
    assert gate.stats()["events_applied"] == {}, "a gap is not an event"
    gate.bus_event(Flush(), None)
    assert gate.stats()["events_applied"] == {"flush": 1}


# -- layering ----------------------------------------------------------------------


def test_hook_imports_nothing_from_the_gate() -> None:
    """The hook is given what it needs; it never reaches for the gate."""
    tree = ast.parse(Path(sessionmw.hook.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            imported.add(module)
            imported.update(f"{module}.{alias.name}" for alias in node.names)
    assert not [name for name in imported if name.startswith("sessionmw.gate")], imported
    code = "import sessionmw.hook, sys; assert 'sessionmw.gate' not in sys.modules"
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=root, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
