"""The Redis Streams bus in one process: a real Redis, a real MemoryCache.

Fault tests run their own ``redis-server`` on a free port and kill/restart it.
Races are waited out by polling with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from sessionmw import SessionRecord, SessionStatus, Settings
from sessionmw.backends import MemoryBackend
from sessionmw.bus import BusSink, bus_from_url, publish
from sessionmw.bus.redis import MAXLEN, REPLAY_WINDOW, RedisBus, format_id, parse_id
from sessionmw.cache import MemoryCache
from sessionmw.errors import BusUnavailable, ConfigError
from sessionmw.events import Event, Flush, SessionRevoked, UserSessionsRevoked, apply_event
from sessionmw.gate import Gate, forget_gates, gate_for
from sessionmw.signing import new_secret, signed_request
from tests.conftest import free_port
from tests.polling import wait_until

pytestmark = pytest.mark.redis

SECRET = new_secret()


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) that tests may kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:

            def up() -> bool:
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            wait_until(up, "redis-server to answer", 10)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def stream() -> str:
    return f"sessionmw:test:{uuid.uuid4().hex}"


def _records() -> list[SessionRecord]:
    now = time.time()
    return [
        SessionRecord("s1", "u1", SessionStatus.ACTIVE, now + 3600, now - 60),
        SessionRecord("s2", "u1", SessionStatus.ACTIVE, now + 3600, now - 60),
        SessionRecord("s3", "u2", SessionStatus.ACTIVE, now + 3600, now - 60),
    ]


@pytest.fixture
def cache() -> MemoryCache:
    return MemoryCache(MemoryBackend(_records()))


class CacheSink:
    """A bus sink applying events to a bare MemoryCache with the gate's policy
    (:meth:`Gate.bus_event` and friends): ``outage_ttl`` as the cache's max age while
    disconnected, none once connected, a flush on a gap. Every call is recorded in
    ``calls`` (``"event"``, ``"connected"``, ``"disconnected"``, ``"gap:<reason>"``)
    and every ``sent_at`` in ``sent_at``."""

    def __init__(self, cache: MemoryCache, outage_ttl: float = 5.0) -> None:
        self.cache = cache
        self.outage_ttl = outage_ttl
        self.calls: list[str] = []
        self.sent_at: list[float | None] = []

    def bus_event(self, event: Event, sent_at: float | None) -> None:
        apply_event(self.cache, event)
        self.calls.append("event")
        self.sent_at.append(sent_at)

    def bus_connected(self) -> None:
        self.cache.set_max_age(None)
        self.calls.append("connected")

    def bus_disconnected(self) -> None:
        self.cache.set_max_age(self.outage_ttl)
        self.calls.append("disconnected")

    def bus_gap(self, reason: str) -> None:
        self.cache.clear()
        self.calls.append(f"gap:{reason}")


_: type[BusSink] = CacheSink  # the test helper keeps to the protocol the gate implements

Buses = Callable[..., RedisBus]


@pytest.fixture
def make_bus(redis_client: redis.Redis, stream: str, redis_url: str) -> Iterator[Buses]:
    made: list[RedisBus] = []

    def make(url: str = redis_url, **options: Any) -> RedisBus:
        options.setdefault("stream", stream)
        options.setdefault("block_ms", 200)
        bus = RedisBus(url, **options)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.stop()


def started(bus: RedisBus, target: MemoryCache | CacheSink) -> RedisBus:
    """Start ``bus`` reporting to ``target`` (a cache gets a fresh CacheSink); wait
    until it is connected and its sink has been told so."""
    sink = target if isinstance(target, CacheSink) else CacheSink(target)
    seen = len(sink.calls)
    bus.start(sink)
    wait_until(lambda: bus.connected, "the subscriber to connect")
    wait_until(lambda: "connected" in sink.calls[seen:], "the sink to hear of it")
    return bus


def status(cache: MemoryCache, session_id: str) -> SessionStatus | None:
    record = cache.lookup(session_id)
    return None if record is None else record.status


def revoked(cache: MemoryCache, session_id: str) -> Callable[[], bool]:
    return lambda: status(cache, session_id) is SessionStatus.REVOKED


# -- configuration -----------------------------------------------------------------


def test_bus_from_url_builds_a_redis_bus(redis_url: str) -> None:
    bus = bus_from_url(redis_url, stream="x", timeout=3)
    assert isinstance(bus, RedisBus)
    assert bus.stream == "x"
    assert bus.timeout == 3
    assert bus_from_url(redis_url, stream="x").timeout == 2.0  # type: ignore[attr-defined]
    assert not bus.connected


@pytest.mark.parametrize("url", ["redis://:notaport/", "redis://h:99999999/x"])
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisBus(url, stream="s")
    assert info.value.key == "bus"


def test_stream_ids() -> None:
    assert parse_id(b"1700000000000-3") == (1700000000000, 3)
    assert parse_id("5") == (5, 0)
    assert format_id((1, 2)) == "1-2"


# -- delivery ----------------------------------------------------------------------


def test_published_events_reach_another_subscriber(make_bus: Buses, cache: MemoryCache) -> None:
    assert status(cache, "s1") is SessionStatus.ACTIVE
    started(make_bus(), cache)
    make_bus().publish([SessionRevoked("s1")])
    wait_until(revoked(cache, "s1"), what="s1 revoked")
    assert status(cache, "s2") is SessionStatus.ACTIVE


def test_redis_cli_xadd_is_applied(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_url: str
) -> None:
    """The SPEC's producer line, verbatim, through the real redis-cli when present."""
    bus = started(make_bus(), cache)
    cache.lookup("s3")
    if shutil.which("redis-cli"):
        argv = ["redis-cli", "-u", redis_url, "XADD", stream, "MAXLEN", "~", "100000", "*",
                "type", "session_revoked", "session_id", "s3"]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)
    else:
        client = redis.Redis.from_url(redis_url)
        client.execute_command(  # type: ignore[no-untyped-call]
            "XADD", stream, "MAXLEN", "~", "100000", "*", "type", "session_revoked",
            "session_id", "s3",
        )  # fmt: skip
        client.close()
    wait_until(revoked(cache, "s3"), what="s3 revoked")
    assert bus.stats()["applied"] == 1


def test_every_event_type(make_bus: Buses, cache: MemoryCache, redis_client: redis.Redis) -> None:
    bus = started(make_bus(), cache)
    for sid in ("s1", "s2", "s3"):
        cache.lookup(sid)
    make_bus().publish([UserSessionsRevoked("u1")])
    wait_until(revoked(cache, "s1"))
    assert status(cache, "s2") is SessionStatus.REVOKED
    assert status(cache, "s3") is SessionStatus.ACTIVE
    assert len(cache) == 3
    make_bus().publish([Flush()])
    wait_until(lambda: len(cache) == 0, what="flush")
    assert bus.stats()["applied"] == 2


def test_user_revocation_without_before_uses_the_entry_time(
    make_bus: Buses, stream: str, redis_client: redis.Redis
) -> None:
    """A fresh login after the event (issued_at later) is not revoked by it."""
    now = time.time()
    backend = MemoryBackend([SessionRecord("old", "u9", SessionStatus.ACTIVE, None, now - 30)])
    cache = MemoryCache(backend)
    bus = started(make_bus(), cache)
    redis_client.xadd(stream, {"type": "user_sessions_revoked", "user_id": "u9"})
    wait_until(lambda: bus.stats()["applied"] == 1)
    backend.put(SessionRecord("fresh", "u9", SessionStatus.ACTIVE, None, time.time() + 1))
    assert status(cache, "old") is SessionStatus.REVOKED
    assert status(cache, "fresh") is SessionStatus.ACTIVE


def test_publish_fixes_before_for_user_events(make_bus: Buses, redis_client: redis.Redis) -> None:
    bus = make_bus()
    bus.publish([UserSessionsRevoked("u1"), UserSessionsRevoked("u2", before=12.5)])
    entries: Any = redis_client.xrange(bus.stream)
    assert [e[1][b"user_id"] for e in entries] == [b"u1", b"u2"]
    assert abs(float(entries[0][1][b"before"]) - time.time()) < 5
    assert float(entries[1][1][b"before"]) == 12.5


def test_bad_entries_are_logged_and_skipped(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    bus = started(make_bus(), cache)
    with capture_logs() as logs:
        redis_client.xadd(stream, {"type": "nonsense"})
        redis_client.xadd(stream, {"type": "session_revoked"})
        redis_client.xadd(stream, {b"type": b"session_revoked", b"session_id": b"\xff\xfe"})
        redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s1"})
        wait_until(revoked(cache, "s1"))
    stats = bus.stats()
    assert stats["bad_entries"] == 3
    assert stats["applied"] == 1
    bad = [entry for entry in logs if entry["event"] == "bus.bad_entry"]
    assert len(bad) == 3
    assert all("entry" in entry and "s1" not in str(entry) for entry in bad)


def test_entries_older_than_start_are_not_replayed(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    """A new process starts at the stream's end: old history does not matter to an
    empty cache (a young entry is re-applied: harmless, and it closes the window
    between start() and the first XREAD)."""
    redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s1"}, id="1000-0")
    bus = started(make_bus(), cache)
    assert bus.stats()["cursor"] == "1000-0"
    make_bus().publish([SessionRevoked("s2")])
    wait_until(revoked(cache, "s2"))
    assert status(cache, "s1") is SessionStatus.ACTIVE
    assert bus.stats()["applied"] == 1
    assert bus.stats()["gaps"] == 0


def test_an_event_added_just_before_the_first_read_is_applied(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    bus = make_bus()
    bus._started_ms = int(time.time() * 1000)  # start() was called, the thread not yet connected
    redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s1"})
    started(bus, cache)
    wait_until(revoked(cache, "s1"))


def test_lag_is_recorded(make_bus: Buses, cache: MemoryCache) -> None:
    sink = CacheSink(cache)
    bus = started(make_bus(), sink)
    producer = make_bus()
    begin = time.time()
    for i in range(20):
        producer.publish([SessionRevoked(f"x{i}")])
    wait_until(lambda: bus.stats()["applied"] == 20)
    # The sink is given each entry's publication time (the gate's lag histogram).
    assert len(sink.sent_at) == 20
    assert all(t is not None and begin - 1 <= t <= time.time() for t in sink.sent_at)
    lag = bus.stats()["lag_ms"]
    assert lag["last"] is not None
    assert lag["max"] is not None
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"] < 5000


# -- lifecycle ---------------------------------------------------------------------


def _bus_threads(stream: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sessionmw-bus:{stream}"]


def test_start_is_idempotent_and_stop_is_prompt(
    make_bus: Buses, cache: MemoryCache, stream: str
) -> None:
    bus = make_bus(block_ms=5000)
    started(bus, cache)
    bus.start(CacheSink(cache))
    assert len(_bus_threads(stream)) == 1
    begin = time.monotonic()
    bus.stop()
    assert time.monotonic() - begin < 2.0, "stop() must interrupt a blocked XREAD"
    assert not _bus_threads(stream)
    assert not bus.connected
    bus.stop()


def test_stop_interrupts_the_backoff(make_bus: Buses, cache: MemoryCache) -> None:
    waits: list[float] = []
    real_wait = threading.Event.wait

    def wait(event: threading.Event, seconds: float) -> bool:
        waits.append(seconds)
        return real_wait(event, seconds)

    port = free_port()  # nothing listens there
    bus = make_bus(f"redis://127.0.0.1:{port}/0", backoff_base=30, backoff_cap=60, wait=wait)
    sink = CacheSink(cache)
    bus.start(sink)
    wait_until(lambda: waits, what="a backoff wait")
    assert set(sink.calls) == {"disconnected"}
    assert 15 <= waits[0] <= 30
    begin = time.monotonic()
    bus.stop()
    assert time.monotonic() - begin < 2.0


def test_backoff_is_capped_exponential_with_jitter(redis_url: str) -> None:
    low = RedisBus(redis_url, stream="s", backoff_base=0.1, backoff_cap=2, rng=lambda: 0)
    high = RedisBus(redis_url, stream="s", backoff_base=0.1, backoff_cap=2, rng=lambda: 1)
    assert [low._backoff(n) for n in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0])
    assert [high._backoff(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
    assert high._backoff(10_000) == 2.0


def test_one_subscriber_per_shared_gate(redis_url: str, stream: str) -> None:
    """Several middleware instances configured alike share one gate, hence one thread."""
    settings = Settings(backend="memory://", bus=redis_url, stream=stream)
    try:
        gates = [gate_for(Settings(backend="memory://", bus=redis_url, stream=stream))
                 for _ in range(3)]  # fmt: skip
        assert gates[0] is gates[1] is gates[2] is gate_for(settings)
        for gate in gates:
            gate.start()
        assert len(_bus_threads(stream)) == 1
        wait_until(lambda: gates[0].bus.connected)
        assert gates[0].stats()["bus_connected"] is True
    finally:
        forget_gates()
    wait_until(lambda: not _bus_threads(stream), what="the subscriber to stop")


class MaxAgeRecorder(MemoryCache):
    """A cache recording every set_max_age call."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend(_records()))
        self.max_ages: list[float | None] = []

    def set_max_age(self, seconds: float | None) -> None:
        self.max_ages.append(seconds)
        super().set_max_age(seconds)


def test_the_sink_hears_disconnected_until_connected(make_bus: Buses) -> None:
    cache = MaxAgeRecorder()
    sink = CacheSink(cache, outage_ttl=3)
    bus = make_bus()
    started(bus, sink)
    assert sink.calls == ["disconnected", "connected"]
    assert cache.max_ages == [3, None]
    bus.stop()
    assert sink.calls == ["disconnected", "connected", "disconnected"]
    assert cache.max_ages == [3, None, 3]


def test_gate_applies_the_outage_ttl_until_connected(redis_url: str, stream: str) -> None:
    """The policy is the gate's: ``bus_outage_ttl`` while its Redis bus is not
    connected (before the first connect, after stop), no max age while connected."""
    cache = MaxAgeRecorder()
    settings = Settings(backend="memory://", bus=redis_url, stream=stream, bus_outage_ttl=3)
    gate = Gate(settings, cache=cache)
    try:
        gate.start()
        wait_until(lambda: gate.bus.connected, "the subscriber to connect")
        wait_until(lambda: cache.max_ages == [3, None], "the gate to hear of it")
    finally:
        gate.stop()
    assert cache.max_ages == [3, None, 3]


# -- gaps --------------------------------------------------------------------------


def test_trimmed_past_a_paused_cursor_flushes(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    bus = started(make_bus(), cache)
    producer = make_bus()
    producer.publish([SessionRevoked("s1")])
    wait_until(revoked(cache, "s1"))
    cache.lookup("s3")
    assert len(cache) == 2
    bus.stop()  # paused: the cursor stays where it was
    producer.publish([SessionRevoked(f"x{i}") for i in range(10)])
    redis_client.xtrim(stream, maxlen=3, approximate=False)
    sink = CacheSink(cache)
    with capture_logs() as logs:
        bus.start(sink)
        wait_until(lambda: bus.connected)
    assert bus.stats()["gaps"] == 1
    assert [e["reason"] for e in logs if e["event"] == "bus.gap_detected"] == ["trimmed"]
    assert sink.calls.count("gap:trimmed") == 1
    assert len(cache) == 0
    # The entries still in the stream were read; the next gap check finds nothing new.
    assert bus.stats()["applied"] == 1 + 3
    bus.stop()
    bus.start(CacheSink(cache))
    wait_until(lambda: bus.connected)
    assert bus.stats()["gaps"] == 1


def test_trimming_only_what_was_read_is_no_gap(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    bus = started(make_bus(), cache)
    make_bus().publish([SessionRevoked(f"x{i}") for i in range(5)])
    wait_until(lambda: bus.stats()["applied"] == 5)
    bus.stop()
    redis_client.xtrim(stream, maxlen=0, approximate=False)
    cache.lookup("s1")
    started(bus, cache)
    assert bus.stats()["gaps"] == 0
    assert len(cache) == 1


def test_unread_entry_deleted_while_paused_flushes(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    bus = started(make_bus(), cache)
    make_bus().publish([SessionRevoked("s1")])
    wait_until(revoked(cache, "s1"))
    bus.stop()
    doomed = redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s2"})
    redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s3"})
    redis_client.xdel(stream, doomed)
    cache.lookup("s2")
    with capture_logs() as logs:
        started(bus, cache)
    assert [e["reason"] for e in logs if e["event"] == "bus.gap_detected"] == ["deleted"]
    assert status(cache, "s2") is SessionStatus.ACTIVE  # flushed, re-fetched; its event is lost
    wait_until(revoked(cache, "s3"))
    bus.stop()
    started(bus, cache)
    assert bus.stats()["gaps"] == 1


def test_stream_deleted_while_running_flushes(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis
) -> None:
    bus = started(make_bus(check_interval=0.05), cache)
    make_bus().publish([SessionRevoked("s1")])
    wait_until(revoked(cache, "s1"))
    cache.lookup("s2")
    with capture_logs() as logs:
        redis_client.delete(stream)
        wait_until(lambda: bus.stats()["gaps"] == 1, what="the gap check")
    assert [e["reason"] for e in logs if e["event"] == "bus.gap_detected"] == ["stream_missing"]
    assert len(cache) == 0
    make_bus().publish([SessionRevoked("s3")])  # the recreated stream is followed
    wait_until(revoked(cache, "s3"))


@pytest.mark.parametrize("new_ids", ["later", "earlier"])
def test_stream_recreated_while_paused_flushes(
    make_bus: Buses, cache: MemoryCache, stream: str, redis_client: redis.Redis, new_ids: str
) -> None:
    bus = started(make_bus(), cache)
    make_bus().publish([SessionRevoked("s1")])
    wait_until(revoked(cache, "s1"))
    bus.stop()
    old_last = redis_client.xinfo_stream(stream)["last-generated-id"]
    redis_client.delete(stream)
    if new_ids == "later":
        # A millisecond past the old stream's last ID (an automatic ID could repeat
        # it exactly when the test runs within the same millisecond).
        text = old_last.decode() if isinstance(old_last, bytes) else str(old_last)
        later = f"{int(text.split('-')[0]) + 1}-0"
        redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s2"}, id=later)
    else:
        redis_client.xadd(stream, {"type": "session_revoked", "session_id": "s2"}, id="5-0")
    cache.lookup("s3")
    started(bus, cache)
    assert bus.stats()["gaps"] == 1
    # Everything in the new stream is unseen: it is read from its start.
    wait_until(revoked(cache, "s2"))
    assert status(cache, "s3") is SessionStatus.ACTIVE


def test_redis_restarted_empty(own_redis: RedisServer, stream: str) -> None:
    """Kill Redis under a connected subscriber, restart it empty: the subscriber
    notices, applies the outage TTL meanwhile, reconnects by itself and flushes."""
    backend = MemoryBackend(_records())
    cache = MemoryCache(backend)
    bus = RedisBus(own_redis.url, stream=stream, block_ms=200, backoff_base=0.02,
                   backoff_cap=0.2)  # fmt: skip
    sink = CacheSink(cache, outage_ttl=0)
    try:
        started(bus, sink)
        producer = own_redis.client()
        producer.xadd(stream, {"type": "session_revoked", "session_id": "s1"})
        wait_until(revoked(cache, "s1"))
        assert status(cache, "s2") is SessionStatus.ACTIVE
        own_redis.kill()
        wait_until(lambda: not bus.connected, what="the subscriber to notice")
        # Outage: outage_ttl=0 sends every lookup to the backend, which still answers.
        backend.put(SessionRecord("s2", "u1", SessionStatus.REVOKED, None, None))
        assert status(cache, "s2") is SessionStatus.REVOKED
        backend.put(_records()[1])
        assert status(cache, "s3") is SessionStatus.ACTIVE
        with pytest.raises(BusUnavailable):
            bus.publish([SessionRevoked("s3")])
        with capture_logs() as logs:
            own_redis.start()
            wait_until(lambda: bus.connected, "the subscriber to reconnect")
        assert bus.stats()["gaps"] == 1
        assert [e["reason"] for e in logs if e["event"] == "bus.gap_detected"] == ["stream_missing"]
        assert [call for call in sink.calls if call.startswith("gap:")] == ["gap:stream_missing"]
        assert len(cache) == 0
        assert bus.stats()["reconnects"] == 1
        producer = own_redis.client()
        producer.xadd(stream, {"type": "session_revoked", "session_id": "s3"})
        wait_until(revoked(cache, "s3"))
    finally:
        bus.stop()


def test_restart_is_a_gap_even_before_any_entry(own_redis: RedisServer, stream: str) -> None:
    """A cursor at 0-0 proves nothing after a restart: entries may have been added
    and lost between the last read and the crash."""
    cache = MemoryCache(MemoryBackend(_records()))
    bus = RedisBus(own_redis.url, stream=stream, block_ms=200, backoff_base=0.02,
                   backoff_cap=0.2)  # fmt: skip
    try:
        started(bus, cache)
        cache.lookup("s1")
        own_redis.kill()
        wait_until(lambda: not bus.connected)
        own_redis.start()
        wait_until(lambda: bus.connected, "the subscriber to reconnect")
        assert bus.stats()["gaps"] == 1
        assert len(cache) == 0
    finally:
        bus.stop()


# -- publishing and the replay guard -----------------------------------------------


def test_publish_uses_one_entry_per_event_and_maxlen(
    make_bus: Buses, stream: str, redis_client: redis.Redis
) -> None:
    make_bus().publish([SessionRevoked("a"), Flush(), UserSessionsRevoked("u", 1.5)])
    entries: Any = redis_client.xrange(stream)
    fields = [entry[1] for entry in entries]
    assert fields == [
        {b"type": b"session_revoked", b"session_id": b"a"},
        {b"type": b"flush"},
        {b"type": b"user_sessions_revoked", b"user_id": b"u", b"before": b"1.5"},
    ]
    assert MAXLEN == 100_000


async def test_apublish(make_bus: Buses, stream: str, redis_client: redis.Redis) -> None:
    bus = make_bus()
    await bus.apublish([SessionRevoked("a"), SessionRevoked("b")])
    assert redis_client.xlen(stream) == 2
    await bus.apublish([])
    bus.stop()


def test_publish_helper(redis_url: str, stream: str, redis_client: redis.Redis) -> None:
    publish(redis_url, [SessionRevoked("a")], stream=stream)
    assert redis_client.xlen(stream) == 1
    with pytest.raises(ConfigError) as info:
        publish("local://", [SessionRevoked("a")], stream=stream)
    assert info.value.key == "bus"
    assert redis_client.xlen(stream) == 1


async def test_publish_to_a_dead_redis_raises_bus_unavailable(stream: str) -> None:
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", stream=stream, timeout=0.5)
    with pytest.raises(BusUnavailable):
        bus.publish([SessionRevoked("a")])
    with pytest.raises(BusUnavailable):
        await bus.apublish([SessionRevoked("a")])
    with pytest.raises(BusUnavailable):
        bus.replay_guard.claim("msg_1")
    with pytest.raises(BusUnavailable):
        await bus.replay_guard.aclaim("msg_1")
    bus.replay_guard.release("msg_1")  # never raises
    await bus.replay_guard.arelease("msg_1")
    bus.stop()
    with pytest.raises(BusUnavailable):
        publish(bus.url, [Flush()], stream=stream, timeout=0.5)


async def test_replay_guard_is_shared_between_processes(
    make_bus: Buses, stream: str, redis_client: redis.Redis
) -> None:
    one, two = make_bus().replay_guard, make_bus().replay_guard
    assert one.claim("msg_1") is True
    assert two.claim("msg_1") is False
    assert await two.aclaim("msg_1") is False
    key = one.key("msg_1")
    assert key.startswith(stream + ":webhook:")
    assert 0 < redis_client.ttl(key) <= REPLAY_WINDOW
    two.release("msg_1")
    assert await one.aclaim("msg_1") is True
    await one.arelease("msg_1")
    assert two.claim("msg_1") is True


# -- through the gate and the hook -------------------------------------------------


def _gate(redis_url: str, stream: str) -> Gate:
    return Gate(
        Settings(
            backend=MemoryBackend(_records()),
            bus=redis_url,
            stream=stream,
            invalidation_secret=(SECRET,),
        )
    )


def test_hook_on_one_gate_reaches_the_other_and_retries_are_duplicates(
    redis_url: str, stream: str, redis_client: redis.Redis
) -> None:
    """Two gates stand for two workers: the hook call lands on one, the event
    reaches both, and the producer's retry landing on the other is a duplicate."""
    first, second = _gate(redis_url, stream), _gate(redis_url, stream)
    try:
        for gate in (first, second):
            gate.start()
            assert isinstance(gate.check("s1"), SessionRecord)
        wait_until(lambda: first.bus.connected and second.bus.connected)
        headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": "s1"}])
        assert first.hook is not None
        assert second.hook is not None
        answer = first.hook.handle(headers, body)
        assert (answer.status, answer.body) == (200, b'{"applied": 1}')
        assert not isinstance(first.check("s1"), SessionRecord)  # applied locally at once
        wait_until(lambda: not isinstance(second.check("s1"), SessionRecord))
        retry = second.hook.handle(headers, body)
        assert retry.status == 200
        assert retry.body == b'{"applied": 0, "duplicate": true}'
        assert redis_client.xlen(stream) == 1
    finally:
        first.stop()
        second.stop()


async def test_async_hook_publishes(redis_url: str, stream: str, redis_client: redis.Redis) -> None:
    first, second = _gate(redis_url, stream), _gate(redis_url, stream)
    try:
        second.start()
        wait_until(lambda: second.bus.connected)
        assert isinstance(await second.acheck("s3"), SessionRecord)
        headers, body = signed_request(SECRET, [{"type": "user_sessions_revoked", "user_id": "u2"}])
        assert first.hook is not None
        assert second.hook is not None
        answer = await first.hook.ahandle(headers, body)
        assert answer.status == 200
        wait_until(lambda: second.cache.peek("s3").status is SessionStatus.REVOKED)  # type: ignore[union-attr]
        retry = await second.hook.ahandle(headers, body)
        assert b"duplicate" in retry.body
    finally:
        first.stop()
        second.stop()


def test_hook_answers_503_and_forgets_the_id_when_redis_is_down(
    own_redis: RedisServer, stream: str
) -> None:
    gate = Gate(Settings(backend=MemoryBackend(_records()), bus=own_redis.url, stream=stream,
                         invalidation_secret=(SECRET,)))  # fmt: skip
    assert gate.hook is not None
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": "s1"}])
    own_redis.kill()
    assert gate.hook.handle(headers, body).status == 503
    own_redis.start()
    assert gate.hook.handle(headers, body).status == 200  # the retry is applied
    assert own_redis.client().xlen(stream) == 1
    gate.bus.stop()  # never started: this closes the producer's connection


# -- fork --------------------------------------------------------------------------

_FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, threading
    import redis
    from sessionmw import Settings
    from sessionmw.gate import gate_for

    url, stream = sys.argv[1], sys.argv[2]
    gate = gate_for(Settings(backend="memory://", bus=url, stream=stream))
    gate.start()                       # the parent runs a subscriber before forking
    deadline = time.monotonic() + 15
    while not gate.bus.connected and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert gate.bus.connected
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert not gate.started and not gate.bus.connected
            gate.start()               # lazily, as on the first request
            deadline = time.monotonic() + 15
            while not gate.bus.connected and time.monotonic() < deadline:
                threading.Event().wait(0.01)
            assert gate.bus.connected, "child subscriber did not connect"
            names = [t.name for t in threading.enumerate() if t.name.startswith("sessionmw-bus")]
            assert len(names) == 1, names
            redis.Redis.from_url(url).xadd(stream, {"type": "flush"})
            while gate.bus.stats()["applied"] < 1 and time.monotonic() < deadline:
                threading.Event().wait(0.01)
            assert gate.bus.stats()["applied"] == 1
            gate.stop()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    deadline = time.monotonic() + 15
    while gate.bus.stats()["applied"] < 1 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert gate.bus.stats()["applied"] == 1   # the parent's subscriber still works
    gate.stop()
    print("ok")
    """
)


def test_fork_after_start_gives_the_child_its_own_subscriber(
    redis_url: str, stream: str, redis_client: redis.Redis
) -> None:
    """Run in a fresh interpreter: forking pytest itself (threads and all) is rude."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, redis_url, stream],
        capture_output=True, cwd=root, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.splitlines()[-1] == b"ok"


def test_stop_closes_the_hook_producer_of_a_gate_never_started(redis_url: str) -> None:
    """A gate that only published (hook calls, no subscriber) still releases its
    Redis connection on stop()."""
    admin = redis.Redis.from_url(redis_url)
    secret = new_secret()
    stream = f"test:{uuid.uuid4().hex}"
    gate = Gate(
        Settings(backend=MemoryBackend(), bus=redis_url, stream=stream, invalidation_secret=secret)
    )
    try:
        before = len(admin.client_list())
        headers, body = signed_request(secret, [{"type": "session_revoked", "session_id": "s"}])
        assert gate.hook is not None
        assert gate.hook.handle(headers, body).status == 200
        assert not gate.started
        assert len(admin.client_list()) == before + 1
        gate.stop()
        wait_until(lambda: len(admin.client_list()) == before, what="producer closed")
    finally:
        gate.stop()
        admin.delete(stream)
        admin.close()
