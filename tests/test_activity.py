"""Activity: the request path records, a background flusher writes ``last_seen`` in
batches at most once per session per ``touch_interval``, and the idle timeout refuses
only after re-reading the store (SPEC section 11). Clocks are injected: no sleeps."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from sessionmw import Settings, StoredSession
from sessionmw.activity import ActivityFlusher
from sessionmw.backends import MemoryBackend
from sessionmw.cache import MemoryCache
from sessionmw.gate import Gate
from sessionmw.records import SessionRecord, SessionStatus

T0 = 1_800_000_000.0


class Clock:
    """One injected time source: the cache's monotonic clock and the wall clock move
    together (the wall clock is T0 ahead)."""

    def __init__(self) -> None:
        self.now = 0.0

    def mono(self) -> float:
        return self.now

    def wall(self) -> float:
        return T0 + self.now


class CountingStore(MemoryBackend):
    """A memory store that counts touch_many calls and can be made to fail."""

    def __init__(self, *records: SessionRecord) -> None:
        super().__init__(list(records))
        self.batches: list[list[tuple[str, float]]] = []
        self.down = False

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        if self.down:
            raise ConnectionError("store down")
        self.batches.append(list(items))
        super().touch_many(items)


def stored(session_id: str, last_seen: float | None = None) -> StoredSession:
    return StoredSession(
        session_id, "u1", SessionStatus.ACTIVE, None, T0 - 100, last_seen=last_seen
    )


def make(
    store: CountingStore, *, touch: float = 60, idle: float = 0
) -> tuple[Clock, MemoryCache, ActivityFlusher]:
    clock = Clock()
    cache = MemoryCache(store, clock=clock.mono, wall_clock=clock.wall)
    flusher = ActivityFlusher(
        cache, store, touch_interval=touch, idle_timeout=idle, clock=clock.wall
    )
    return clock, cache, flusher


def test_hits_are_recorded_and_written_once_per_interval_in_one_batch() -> None:
    store = CountingStore(stored("a"), stored("b"))
    clock, cache, flusher = make(store, touch=60)
    cache.lookup("a")
    cache.lookup("b")
    for second in range(1, 200):  # a burst: both sessions, every second, 199 s
        clock.now = float(second)
        assert cache.hit("a") is not None
        assert cache.hit("b") is not None
        flusher.step()
    # One write per session per touch_interval: t=60, 120, 180.
    assert len(store.batches) == 3
    assert all(len(batch) == 2 for batch in store.batches)  # batched: one call each
    assert [when for sid, when in store.batches[-1] if sid == "a"] == [T0 + 180]
    got = store.get("a")
    assert got is not None
    assert got.last_seen == T0 + 180


def test_no_requests_no_writes() -> None:
    store = CountingStore(stored("a"))
    clock, cache, flusher = make(store, touch=10)
    cache.lookup("a")
    for second in range(1, 100):
        clock.now = float(second)
        flusher.step()
    assert store.batches == []


def test_a_store_outage_delays_the_write_and_loses_nothing() -> None:
    store = CountingStore(stored("a"))
    clock, cache, flusher = make(store, touch=10)
    cache.lookup("a")
    clock.now = 5
    assert cache.hit("a") is not None
    store.down = True
    clock.now = 11
    with capture_logs() as logs:
        flusher.step()
    assert store.batches == []
    assert [e["event"] for e in logs] == ["session.touch_failed"]
    store.down = False
    clock.now = 22
    flusher.step()
    assert store.batches == [[("a", T0 + 5)]]


def test_stop_writes_what_is_pending() -> None:
    """Shutdown (lifespan shutdown, atexit) flushes whatever is pending."""
    store = CountingStore(stored("a"))
    clock, cache, flusher = make(store, touch=3600)
    cache.lookup("a")
    clock.now = 1
    assert cache.hit("a") is not None
    flusher.stop()
    assert store.batches == [[("a", T0 + 1)]]


def test_idle_sessions_are_dropped_from_the_cache() -> None:
    store = CountingStore(stored("a"), stored("b"))
    clock, cache, flusher = make(store, touch=10, idle=100)
    cache.lookup("a")
    cache.lookup("b")
    clock.now = 1
    cache.hit("a")
    cache.hit("b")
    for second in range(2, 150):
        clock.now = float(second)
        cache.hit("a")  # a is used, b is not
        flusher.step()
    assert "a" in cache
    assert "b" not in cache, "idle for 100 s: its next request re-reads the store"


def gate_with(store: CountingStore, clock: Clock, *, idle: float, touch: float) -> Gate:
    settings = Settings(backend=store, idle_timeout=idle, touch_interval=touch)
    cache = MemoryCache(store, clock=clock.mono, wall_clock=clock.wall)
    gate = Gate(settings, cache=cache)
    assert gate.activity is not None
    gate.activity = ActivityFlusher(
        cache, store, touch_interval=touch, idle_timeout=idle, clock=clock.wall
    )
    return gate


def test_idle_session_is_refused_after_a_fresh_store_read() -> None:
    store = CountingStore(stored("s", last_seen=T0))
    clock = Clock()
    gate = gate_with(store, clock, idle=100, touch=10)
    assert isinstance(gate.check("s"), SessionRecord)
    clock.now = 150  # no request for 150 s, here or (the store says) anywhere
    with capture_logs() as logs:
        answer = gate.check("s")
    assert getattr(answer, "code", None) == "invalid_session"
    assert [e["reason"] for e in logs if e["event"] == "session.rejected"] == ["idle"]
    assert gate.hit("s") is None, "refused on the hit path from now on"


def test_a_session_used_through_other_workers_is_not_idle_here() -> None:
    """This worker has not seen the session for longer than the timeout, but the
    store's last_seen (written by the other workers' flushers) is recent."""
    store = CountingStore(stored("s", last_seen=T0))
    clock = Clock()
    gate = gate_with(store, clock, idle=100, touch=10)
    assert isinstance(gate.check("s"), SessionRecord)
    clock.now = 150
    store.touch_many([("s", T0 + 145)])  # another worker's flush, 5 s ago
    assert isinstance(gate.check("s"), SessionRecord)
    clock.now = 151
    assert gate.hit("s") is not None


def test_idle_timeout_needs_a_store_that_keeps_last_seen() -> None:
    class ReadOnly:
        def lookup(self, session_id: str) -> None:
            return None

        async def alookup(self, session_id: str) -> None:
            return None

    with pytest.raises(Exception, match="idle_timeout") as info:
        Gate(Settings(backend=ReadOnly(), idle_timeout=60, touch_interval=10))
    assert getattr(info.value, "key", None) == "idle_timeout"
    assert Gate(Settings(backend=ReadOnly())).activity is None, "nothing to record for"
