"""The framework-free hook: a batch is validated whole, applied and published, or
answered 503 with its ``webhook-id`` released, whatever went wrong on the way out.
The hook depends on an apply function and a bus, not on a gate."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from sessionmw.answers import DUPLICATE
from sessionmw.events import Event, SessionRevoked, UserSessionsRevoked
from sessionmw.hook import InvalidationHook
from sessionmw.replay import LocalReplayGuard, ReplayGuard
from sessionmw.signing import new_secret, signed_request

SECRET = new_secret()
NOW = 1_800_000_000.0


class FakeBus:
    """A bus whose publish fails with ``error`` (None: succeeds)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.published: list[list[Event]] = []
        self.guard = LocalReplayGuard()

    @property
    def replay_guard(self) -> ReplayGuard:
        return self.guard

    def publish(self, events: Sequence[Event]) -> None:
        if self.error is not None:
            raise self.error
        self.published.append(list(events))

    async def apublish(self, events: Sequence[Event]) -> None:
        self.publish(events)


def make(bus: FakeBus) -> tuple[InvalidationHook, list[list[Event]]]:
    applied: list[list[Event]] = []
    hook = InvalidationHook(
        [SECRET], apply=lambda events: applied.append(list(events)), bus=bus, clock=lambda: NOW
    )
    return hook, applied


def request(events: list[dict[str, Any]], msg_id: str = "msg_1") -> tuple[dict[str, str], bytes]:
    return signed_request(SECRET, events, msg_id=msg_id, timestamp=int(NOW))


@pytest.mark.parametrize(
    "error",
    [UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"), RuntimeError("boom"), OSError()],
    ids=["encode", "bug", "oserror"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_any_publish_failure_is_503_and_the_id_is_released(
    error: BaseException, mode: str
) -> None:
    bus = FakeBus(error)
    hook, _ = make(bus)
    headers, body = request([{"type": "session_revoked", "session_id": "s1"}])
    handle = hook.handle if mode == "sync" else None
    answer = handle(headers, body) if handle else await hook.ahandle(headers, body)
    assert (answer.status, json.loads(answer.body)) == (503, {"error": "bus_unavailable"})
    bus.error = None  # the bus is back: the producer's retry (same webhook-id) goes through
    answer = hook.handle(headers, body) if mode == "sync" else await hook.ahandle(headers, body)
    assert (answer.status, json.loads(answer.body)) == (200, {"applied": 1})
    assert bus.published == [[SessionRevoked("s1")]]


def test_a_failing_replay_guard_is_503() -> None:
    class DownGuard(LocalReplayGuard):
        def claim(self, webhook_id: str) -> bool:
            raise ConnectionError("guard store down")

    bus = FakeBus()
    bus.guard = DownGuard()
    hook, applied = make(bus)
    answer = hook.handle(*request([{"type": "flush"}]))
    assert answer.status == 503
    assert applied == []


def test_a_batch_is_validated_whole_before_anything_is_applied() -> None:
    bus = FakeBus()
    hook, applied = make(bus)
    batch = [
        {"type": "session_revoked", "session_id": "ok"},
        {"type": "session_revoked", "session_id": "bad\ud800"},
    ]
    # json.dumps writes the lone surrogate as the escape "\ud800".
    answer = hook.handle(*request(batch))
    assert (answer.status, answer.code) == (400, "invalid_payload")
    assert applied == []
    assert bus.published == []
    # Nothing was claimed either: the same ID with a good batch is applied.
    answer = hook.handle(*request([{"type": "flush"}]))
    assert answer.status == 200


@pytest.mark.parametrize(
    ("before", "expected"),
    [(None, NOW), (NOW - 60, NOW - 60), (NOW + 3600, NOW), (1e15, NOW)],
    ids=["default", "past", "future", "far-future"],
)
def test_before_never_later_than_the_receive_time(before: float | None, expected: float) -> None:
    """Applied here and published with the same, clamped ``before``."""
    bus = FakeBus()
    hook, applied = make(bus)
    event: dict[str, Any] = {"type": "user_sessions_revoked", "user_id": "u"}
    if before is not None:
        event["before"] = before
    assert hook.handle(*request([event])).status == 200
    assert applied == [[UserSessionsRevoked("u", expected)]]
    assert bus.published == applied


def test_signature_is_over_raw_bytes_and_non_utf8_is_a_payload_error() -> None:
    from sessionmw.signing import sign

    hook, applied = make(FakeBus())
    body = b'{"events": [{"type": "flush"}]}\xff'
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": sign(SECRET, "m", int(NOW), body),
    }
    assert hook.handle(headers, body).code == "invalid_payload"
    headers["webhook-signature"] = sign(new_secret(), "m", int(NOW), body)
    assert hook.handle(headers, body).code == "invalid_signature"
    assert applied == []


@pytest.mark.parametrize("offset", [-301, 301])
def test_tolerance_is_five_minutes_both_ways(offset: int) -> None:
    hook, _ = make(FakeBus())
    headers, body = signed_request(SECRET, [{"type": "flush"}], timestamp=int(NOW) + offset)
    assert hook.handle(headers, body).code == "invalid_signature"
    headers, body = signed_request(SECRET, [{"type": "flush"}], timestamp=int(NOW) + offset // 2)
    assert hook.handle(headers, body).status == 200


def test_replay_memory_is_bounded_by_count_whatever_the_id_length() -> None:
    """Entries are fixed-size digests: a flood of long IDs costs what short ones do,
    and the count bound evicts the oldest."""
    guard = LocalReplayGuard(max_ids=100, clock=lambda: 0.0)
    for i in range(500):
        assert guard.claim(f"{i:0>256}")
    assert len(guard) == 100
    assert all(sys.getsizeof(key) == sys.getsizeof(b"x" * 16) for key in guard._seen)
    assert not guard.claim(f"{499:0>256}"), "recent IDs are still remembered"
    assert guard.claim(f"{0:0>256}"), "the oldest were forgotten first"


def test_hook_module_does_not_import_the_gate() -> None:
    import subprocess

    code = "import sys, sessionmw.hook; assert 'sessionmw.gate' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_future_before_never_revokes_a_later_login() -> None:
    """The cache clamps too: a bus event with a ``before`` in the future does not
    revoke a session issued after the event arrived."""
    from sessionmw.backends import MemoryBackend
    from sessionmw.cache import MemoryCache
    from sessionmw.records import SessionRecord, SessionStatus

    wall = [NOW]
    backend = MemoryBackend()
    cache = MemoryCache(backend, wall_clock=lambda: wall[0])
    cache.mark_user_revoked("u", before=NOW + 86400)
    wall[0] = NOW + 10
    backend.put(SessionRecord("fresh", "u", SessionStatus.ACTIVE, None, NOW + 5))
    record = cache.lookup("fresh")
    assert record is not None
    assert record.status is SessionStatus.ACTIVE
    backend.put(SessionRecord("old", "u", SessionStatus.ACTIVE, None, NOW - 5))
    old = cache.lookup("old")
    assert old is not None
    assert old.status is SessionStatus.REVOKED


@pytest.mark.parametrize("error", [None, ConnectionError("bus down")], ids=["ok", "fails"])
async def test_async_delivery_frees_the_loop_and_survives_a_cancelled_request(
    error: BaseException | None,
) -> None:
    """While the bus blocks, the loop keeps running; cancelling the request does not
    stop the delivery halfway: it is published, or it fails and the ID is released."""
    import asyncio
    import threading

    entered, go_on, left = threading.Event(), threading.Event(), threading.Event()

    class SlowBus(FakeBus):
        def publish(self, events: Sequence[Event]) -> None:
            entered.set()
            try:
                assert go_on.wait(20)
                super().publish(events)
            finally:
                left.set()

    bus = SlowBus(error)
    hook, applied = make(bus)
    headers, body = request([{"type": "session_revoked", "session_id": "s1"}])
    task = asyncio.create_task(hook.ahandle(headers, body))
    ticks = 0
    while not (entered.is_set() and ticks >= 5) and ticks < 2000:
        await asyncio.sleep(0.01)  # runs only if publish does not hold the loop
        ticks += 1
    assert entered.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    go_on.set()
    assert await asyncio.to_thread(left.wait, 20)
    # The worker thread went on after the cancel: published, or released the ID (just
    # after publish raised: poll for it) so the producer's retry goes through.
    bus.error = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    answer = hook.handle(headers, body)
    while error is not None and answer == DUPLICATE and loop.time() < deadline:
        await asyncio.sleep(0.01)
        answer = hook.handle(headers, body)
    assert bus.published == [[SessionRevoked("s1")]]
    if error is None:
        assert answer == DUPLICATE
        assert applied == [[SessionRevoked("s1")]]
    else:
        assert json.loads(answer.body) == {"applied": 1}
        assert applied == [[SessionRevoked("s1")]] * 2
