"""Prometheus metrics: every counter, gauge and histogram read from a real scrape."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sessionmw import BackendUnavailable, SessionRecord, SessionStatus, Settings
from sessionmw._compat import MissingExtra, require, require_extra
from sessionmw.backends import MemoryBackend
from sessionmw.cache import MemoryCache
from sessionmw.events import Flush, SessionRevoked, UserSessionsRevoked
from sessionmw.gate import Gate
from sessionmw.metrics import gate_name, register_metrics
from sessionmw.signing import new_secret

# IDs use letters outside [0-9a-f], so no hex gate label can contain one by chance.
ALICE = SessionRecord("sess-alice", "user-alice", SessionStatus.ACTIVE, None, None)
GONE = SessionRecord("sess-gone", "user-gone", SessionStatus.REVOKED, None, None)
OLD = SessionRecord("sess-old", "user-old", SessionStatus.ACTIVE, time.time() - 60, None)
ROB = SessionRecord("sess-rob", "user-rob", SessionStatus.ACTIVE, None, None)
IDS = ("sess-", "user-", "nobody")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class SwitchBackend(MemoryBackend):
    """A memory store that can be switched off (then every call is unavailable)."""

    down = False

    def lookup(self, session_id: str) -> SessionRecord | None:
        if self.down:
            raise BackendUnavailable("down")
        return super().lookup(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parse(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of a real text exposition of ``registry``."""
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def assert_no_ids(samples: Samples) -> None:
    for name, labels in samples:
        for key, label in labels:
            assert not any(marker in label for marker in IDS), (name, key, label)


pytestmark = pytest.mark.usefixtures("fresh_gates")


def test_scripted_requests_and_events_read_back_exactly() -> None:
    """After a scripted sequence through a gate, each series has its expected value."""
    backend = SwitchBackend([ALICE, GONE, OLD, ROB])
    gate = Gate(Settings(backend=backend, max_entries=3))
    registry = CollectorRegistry()
    register_metrics(registry, gates=[gate])
    g = gate_name(gate)

    assert gate.check(None).code == "missing_session"  # type: ignore[union-attr]
    assert gate.check("not valid!").code == "invalid_session"  # type: ignore[union-attr]
    assert gate.check("sess-alice") == ALICE  # miss -> backend call 1
    assert gate.check("sess-alice") == ALICE  # hit
    assert gate.check("nobody").code == "invalid_session"  # type: ignore[union-attr]
    assert gate.check("nobody").code == "invalid_session"  # type: ignore[union-attr]
    assert gate.check("sess-gone").code == "invalid_session"  # type: ignore[union-attr]
    # The cache is full (3): storing sess-old evicts the one unreferenced entry.
    assert gate.check("sess-old").code == "invalid_session"  # type: ignore[union-attr]
    gate.apply_events([SessionRevoked("sess-alice")])
    assert gate.check("sess-alice").code == "invalid_session"  # type: ignore[union-attr]
    gate.apply_event(UserSessionsRevoked("user-nobody-cached"))
    gate.apply_event(Flush())
    backend.down = True
    assert gate.check("sess-rob").code == "session_backend_unavailable"  # type: ignore[union-attr]
    backend.down = False
    assert gate.check("sess-rob") == ROB

    s = scrape(registry)
    expected_counters = {
        "sessionmw_requests_allowed_total": 3,
        "sessionmw_requests_backend_unavailable_total": 1,
        "sessionmw_cache_hits_total": 2,
        "sessionmw_cache_negative_hits_total": 1,
        "sessionmw_cache_misses_total": 6,
        "sessionmw_cache_coalesced_waits_total": 0,
        "sessionmw_cache_evictions_total": 1,
        "sessionmw_cache_expirations_total": 0,
        "sessionmw_cache_stale_served_total": 0,
        "sessionmw_cache_revocations_total": 1,
        "sessionmw_backend_errors_total": 1,
        "sessionmw_bus_gaps_total": 0,
        "sessionmw_bus_reconnects_total": 0,
    }
    for name, expected in expected_counters.items():
        assert value(s, name, gate=g) == expected, name
    rejected = {"missing": 1, "malformed": 1, "unknown": 2, "revoked": 2, "expired": 1}
    for reason, expected in rejected.items():
        assert value(s, "sessionmw_requests_rejected_total", gate=g, reason=reason) == expected
    events = {"session_revoked": 1, "user_sessions_revoked": 1, "flush": 1}
    for kind, expected in events.items():
        assert value(s, "sessionmw_invalidation_events_total", gate=g, type=kind) == expected
    # Only the batch counts as received (from the hook, the default source); the two
    # events applied one by one did not come from anywhere.
    sources = {"hook": 1, "bus": 0, "oidc": 0, "ssf": 0}
    for source, expected in sources.items():
        assert (
            value(s, "sessionmw_invalidation_events_received_total", gate=g, source=source)
            == expected
        )
    assert value(s, "sessionmw_cache_entries", gate=g) == 1  # flushed, then sess-rob
    assert value(s, "sessionmw_cache_max_entries", gate=g) == 3
    assert value(s, "sessionmw_bus_connected", gate=g) == 1
    # Six backend calls, the failed one included; the memory store answers in < 1 s.
    assert value(s, "sessionmw_backend_lookup_seconds_count", gate=g) == 6
    assert value(s, "sessionmw_backend_lookup_seconds_bucket", gate=g, le="1.0") == 6
    assert value(s, "sessionmw_backend_lookup_seconds_bucket", gate=g, le="+Inf") == 6
    assert value(s, "sessionmw_revocation_lag_seconds_count", gate=g) == 0
    assert_no_ids(s)


def test_expirations_and_stale_served_with_an_injected_clock() -> None:
    """An expired record re-fetched counts an expiration; served stale, a stale hit."""
    clock = Clock()
    backend = SwitchBackend([ALICE])
    settings = Settings(backend=backend, ttl=10, stale_if_error=30)
    gate = Gate(settings, cache=MemoryCache(backend, ttl=10, stale_if_error=30, clock=clock))
    registry = CollectorRegistry()
    register_metrics(registry, gates={"api": gate})

    assert gate.check("sess-alice") == ALICE
    clock.now += 11
    backend.down = True
    assert gate.check("sess-alice") == ALICE  # expired, backend down: served stale
    backend.down = False
    clock.now += 1
    assert gate.check("sess-alice") == ALICE  # expired again: re-fetched

    s = scrape(registry)
    assert value(s, "sessionmw_cache_expirations_total", gate="api") == 2
    assert value(s, "sessionmw_cache_stale_served_total", gate="api") == 1
    assert value(s, "sessionmw_backend_errors_total", gate="api") == 1
    assert value(s, "sessionmw_cache_misses_total", gate="api") == 3
    assert value(s, "sessionmw_requests_allowed_total", gate="api") == 3
    assert value(s, "sessionmw_requests_backend_unavailable_total", gate="api") == 0


class GatedBackend(MemoryBackend):
    """Holds every async lookup until ``release`` is set."""

    def __init__(self, records: list[SessionRecord]) -> None:
        super().__init__(records)
        self.release = asyncio.Event()
        self.calls = 0

    async def alookup(self, session_id: str) -> SessionRecord | None:
        self.calls += 1
        await self.release.wait()
        return await super().alookup(session_id)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (a bounded number of loop turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_coalesced_waits_are_counted() -> None:
    """Two concurrent misses of one ID: one backend call, one coalesced wait."""
    backend = GatedBackend([ALICE])
    gate = Gate(Settings(backend=backend))
    registry = CollectorRegistry()
    register_metrics(registry, gates=[gate])

    first = asyncio.create_task(gate.acheck("sess-alice"))
    await until(lambda: backend.calls == 1)
    second = asyncio.create_task(gate.acheck("sess-alice"))
    await until(lambda: gate.cache.stats()["coalesced"] == 1)
    backend.release.set()
    assert await first == ALICE
    assert await second == ALICE

    s = scrape(registry)
    g = gate_name(gate)
    assert backend.calls == 1
    assert value(s, "sessionmw_cache_coalesced_waits_total", gate=g) == 1
    assert value(s, "sessionmw_cache_misses_total", gate=g) == 2
    assert value(s, "sessionmw_backend_lookup_seconds_count", gate=g) == 1
    assert value(s, "sessionmw_requests_allowed_total", gate=g) == 2


class StatsBus:
    """A bus reporting Redis-bus style health (stats(); its lag_ms is not a metric)."""

    connected = False

    def stats(self) -> dict[str, Any]:
        return {"connected": False, "gaps": 2, "reconnects": 3, "lag_ms": {"last": 4.0}}


def test_bus_health_and_revocation_lag() -> None:
    """Gaps, reconnects and the connected gauge come from the bus; lag is the gate's
    histogram, fed by the events the bus hands it (Gate.bus_event)."""
    gate = Gate(Settings(backend=MemoryBackend()))
    bus = StatsBus()
    gate.bus = bus  # type: ignore[assignment]
    registry = CollectorRegistry()
    register_metrics(registry, gates=[gate])

    # As the Redis bus does per entry read: the event and its publication time.
    gate.bus_event(UserSessionsRevoked("user-nobody"), time.time() - 0.002)
    gate.bus_event(SessionRevoked("sess-alice"), time.time() - 0.5)
    gate.apply_event(Flush())  # not from the bus (hook, Sessions): no lag

    s = scrape(registry)
    g = gate_name(gate)
    assert value(s, "sessionmw_bus_gaps_total", gate=g) == 2
    assert value(s, "sessionmw_bus_reconnects_total", gate=g) == 3
    assert value(s, "sessionmw_bus_connected", gate=g) == 0
    assert value(s, "sessionmw_revocation_lag_seconds_count", gate=g) == 2
    assert value(s, "sessionmw_revocation_lag_seconds_bucket", gate=g, le="0.005") == 1
    assert value(s, "sessionmw_revocation_lag_seconds_bucket", gate=g, le="0.25") == 1
    assert value(s, "sessionmw_revocation_lag_seconds_bucket", gate=g, le="60.0") == 2
    assert value(s, "sessionmw_revocation_lag_seconds_sum", gate=g) >= 0.502
    assert value(s, "sessionmw_invalidation_events_total", gate=g, type="session_revoked") == 1
    assert (
        value(s, "sessionmw_invalidation_events_total", gate=g, type="user_sessions_revoked") == 1
    )
    assert value(s, "sessionmw_invalidation_events_total", gate=g, type="flush") == 1
    received = "sessionmw_invalidation_events_received_total"
    assert value(s, received, gate=g, source="bus") == 2
    assert value(s, received, gate=g, source="hook") == 0


def test_events_are_counted_by_source() -> None:
    """Every batch counts its events under the source its receiver names (the hook,
    the bus, an OpenID back-channel logout, a Shared Signals event); a source outside
    the four still shows, under its own name."""
    gate = Gate(Settings(backend=MemoryBackend([ALICE])))
    registry = CollectorRegistry()
    register_metrics(registry, gates={"g": gate})
    gate.apply_events([SessionRevoked("sess-a"), SessionRevoked("sess-b")])
    gate.apply_events([UserSessionsRevoked("user-a")], source="oidc")
    gate.apply_events([SessionRevoked("sess-c")], source="ssf")
    gate.apply_events([SessionRevoked("sess-d"), Flush()], source="ssf")
    gate.bus_event(SessionRevoked("sess-e"), None)
    gate.apply_events([], source="oidc")
    gate.apply_events([Flush()], source="replay")
    s = scrape(registry)
    received = "sessionmw_invalidation_events_received_total"
    counted = {"hook": 2, "bus": 1, "oidc": 1, "ssf": 3, "replay": 1}
    for source, expected in counted.items():
        assert value(s, received, gate="g", source=source) == expected, source
    assert gate.stats()["events_received"] == counted
    assert value(s, "sessionmw_invalidation_events_total", gate="g", type="session_revoked") == 5


async def test_requests_through_the_asgi_adapter_on_the_default_collection() -> None:
    """Without ``gates=``, the collector finds the gate an adapter built; no ID leaks."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sessionmw.asgi import DeviceSessionMiddleware

    async def whoami(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.device_session.user_id)

    backend = MemoryBackend([ALICE])
    app = DeviceSessionMiddleware(
        Starlette(routes=[Route("/whoami", whoami)]),
        backend=backend,
        invalidation_secret=(new_secret(),),
        exempt_paths=["/only-in-test-metrics"],  # a label no other test's gate shares
    )
    registry = CollectorRegistry()
    register_metrics(registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.get("/whoami", headers={"x-device-session-id": "sess-alice"})
        assert ok.text == "user-alice"
        await client.get("/whoami", headers={"x-device-session-id": "sess-alice"})
        assert (await client.get("/whoami")).status_code == 401
        unknown = await client.get("/whoami", headers={"x-device-session-id": "nobody"})
        assert unknown.status_code == 401

    s = scrape(registry)
    g = gate_name(app.gate)
    assert value(s, "sessionmw_requests_allowed_total", gate=g) == 2
    assert value(s, "sessionmw_requests_rejected_total", gate=g, reason="missing") == 1
    assert value(s, "sessionmw_requests_rejected_total", gate=g, reason="unknown") == 1
    assert value(s, "sessionmw_cache_hits_total", gate=g) == 1
    assert value(s, "sessionmw_cache_entries", gate=g) == 2
    assert_no_ids(s)


def test_gate_label_is_stable_and_secret_free() -> None:
    """Alike gates share a label; a different secret value does not change it."""
    backend = MemoryBackend()
    a = Gate(Settings(backend=backend, invalidation_secret=(new_secret(),)))
    b = Gate(Settings(backend=backend, invalidation_secret=(new_secret(),)))
    c = Gate(Settings(backend=backend, ttl=5))
    assert gate_name(a) == gate_name(b) != gate_name(c)
    assert len(gate_name(a)) == 8
    assert gate_name(Gate(Settings())) == gate_name(Gate(Settings()))


def test_alike_gates_are_summed_under_one_label() -> None:
    """Two gates with the same label export one series: the sum."""
    backend = MemoryBackend([ALICE])
    a, b = Gate(Settings(backend=backend)), Gate(Settings(backend=backend))
    registry = CollectorRegistry()
    register_metrics(registry, gates=[a, b])
    a.check("sess-alice")
    b.check("sess-alice")
    b.check("sess-alice")
    s = scrape(registry)
    assert value(s, "sessionmw_requests_allowed_total", gate=gate_name(a)) == 3
    assert value(s, "sessionmw_cache_entries", gate=gate_name(a)) == 2


def test_registering_twice_on_one_registry_is_refused() -> None:
    """prometheus_client's duplicate check applies; unregistering frees the names."""
    registry = CollectorRegistry()
    collector = register_metrics(registry, gates=[])
    with pytest.raises(ValueError, match="Duplicated"):
        register_metrics(registry, gates=[])
    registry.unregister(collector)
    register_metrics(registry, gates=[])
    assert 'sessionmw_info{version="' in generate_latest(registry).decode()


def test_metrics_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing sessionmw.metrics without prometheus_client says what to install."""
    monkeypatch.delitem(sys.modules, "sessionmw.metrics", raising=False)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'sessionmw\[prometheus\]'"):
        importlib.import_module("sessionmw.metrics")


def test_require_extra_only_rewrites_the_missing_package() -> None:
    """A missing package names the extra; other import errors surface unchanged."""
    with pytest.raises(MissingExtra, match=r"sessionmw\[flask\]") as info:
        require("no_such_package_xyz", "flask", feature="sessionmw.contrib.flask")
    assert "sessionmw.contrib.flask needs 'no_such_package_xyz'" in str(info.value)
    with pytest.raises(ModuleNotFoundError) as other, require_extra("json", "none"):
        import no_such_dependency_abc  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(other.value, MissingExtra)
    assert require("json", "none").__name__ == "json"


async def test_example_app_serves_metrics_exempt() -> None:
    """examples/metrics_app.py: /metrics and /healthz need no session; /metrics
    shows the requests made through the app."""
    import httpx

    from examples.metrics_app import create_app

    registry = CollectorRegistry()
    app = create_app(Settings(backend=MemoryBackend([ALICE])), registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/healthz")).text == "ok"
        whoami = await client.get("/whoami", headers={"x-device-session-id": "sess-alice"})
        assert whoami.json() == {"user_id": "user-alice", "session_id": "sess-alice"}
        assert (await client.get("/whoami")).status_code == 401
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'sessionmw_requests_allowed_total{gate="app"} 1.0' in metrics.text
    assert 'sessionmw_requests_rejected_total{gate="app",reason="missing"} 1.0' in metrics.text
    assert "alice" not in metrics.text


@pytest.mark.redis
def test_redis_bus_lag_and_events_from_a_real_stream(redis_client: Any, redis_url: str) -> None:
    """An entry XADDed to the stream is applied by the worker's subscriber; the scrape
    shows it by type, its lag in the histogram, and a connected bus."""
    import uuid

    stream = f"sessionmw:test-metrics:{uuid.uuid4().hex}"
    gate = Gate(Settings(backend=MemoryBackend([ALICE]), bus=redis_url, stream=stream))
    registry = CollectorRegistry()
    register_metrics(registry, gates={"bus": gate})
    gate.start()
    try:
        deadline = time.monotonic() + 10
        pause = threading.Event()
        while not gate.bus.connected and time.monotonic() < deadline:
            pause.wait(0.005)  # polling a background thread, not ordering a race
        assert gate.check("sess-alice") == ALICE
        redis_client.xadd(stream, {"type": "session_revoked", "session_id": "sess-alice"})
        while gate.events_applied.get("session_revoked", 0) == 0 and time.monotonic() < deadline:
            pause.wait(0.005)
        s = scrape(registry)
    finally:
        gate.stop()
        redis_client.delete(stream)
    assert value(s, "sessionmw_invalidation_events_total", gate="bus", type="session_revoked") == 1
    assert value(s, "sessionmw_revocation_lag_seconds_count", gate="bus") == 1
    assert value(s, "sessionmw_revocation_lag_seconds_bucket", gate="bus", le="+Inf") == 1
    assert value(s, "sessionmw_revocation_lag_seconds_bucket", gate="bus", le="10.0") == 1
    assert value(s, "sessionmw_bus_connected", gate="bus") == 1
    assert value(s, "sessionmw_bus_gaps_total", gate="bus") == 0
    assert value(s, "sessionmw_bus_reconnects_total", gate="bus") == 0
    assert value(s, "sessionmw_cache_revocations_total", gate="bus") == 1
    assert gate.check("sess-alice").code == "invalid_session"  # type: ignore[union-attr]
    assert_no_ids(s)


def test_gate_label_ignores_passwords_in_urls() -> None:
    """A password in the backend or bus URL does not enter the label's hash."""

    def name(password: str) -> str:
        settings = Settings(
            backend=f"postgresql://app:{password}@db.internal/app",
            bus=f"redis://:{password}@redis.internal:6379/0",
        )
        return gate_name(Gate(settings))

    assert name("hunter2") == name("correct-horse")
