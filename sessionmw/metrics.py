"""Prometheus metrics for every session gate in the process (``sessionmw[prometheus]``).

One call registers a collector that reads the gates' own cumulative counters when
Prometheus scrapes, so requests pay nothing for metrics::

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from sessionmw.metrics import register_metrics

    register_metrics()  # on prometheus_client's default registry

    async def metrics(request):  # a route at /metrics, listed in exempt_paths
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

Pass ``registry=`` to use your own :class:`~prometheus_client.CollectorRegistry`,
and ``gates=`` to export chosen gates only (a mapping gives them your own names).

Every series carries a ``gate`` label: by default a short, stable hash of the gate's
settings (secrets excluded), so the label survives restarts and is equal in every
worker configured alike. Labels never hold a session or user ID.

.. warning::
   Under a pre-forking server each worker has its own gates and counters. Use
   prometheus_client's multiprocess mode, or scrape each worker, as for any other
   per-process metric.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sessionmw._compat import require_extra

with require_extra("prometheus_client", "prometheus", feature="sessionmw.metrics"):
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector

from sessionmw._histogram import Snapshot
from sessionmw._version import __version__
from sessionmw.gate import Gate, live_gates

__all__ = ["REJECTION_REASONS", "SessionGateCollector", "gate_name", "register_metrics"]

#: Reasons a request is refused with 401 (the ``reason`` label); always exported.
REJECTION_REASONS = ("missing", "malformed", "unknown", "revoked", "expired")
#: Invalidation event types (the ``type`` label); always exported.
EVENT_TYPES = ("session_revoked", "user_sessions_revoked", "flush")

#: ``cache.stats()`` key -> (metric name without ``sessionmw_``, help).
_CACHE_COUNTERS = (
    ("hits", "cache_hits", "Lookups answered from the cache with a known session."),
    ("negative_hits", "cache_negative_hits", "Lookups answered from the cache as unknown."),
    ("misses", "cache_misses", "Lookups the cache could not answer (a backend call or a wait)."),
    ("coalesced", "cache_coalesced_waits", "Misses that waited for another caller's fetch."),
    ("evictions", "cache_evictions", "Entries evicted by the LRU bound (max_entries)."),
    ("expirations", "cache_expirations", "Entries found past their TTL and re-fetched."),
    ("stale_served", "cache_stale_served", "Expired records served under stale_if_error."),
    ("revocations", "cache_revocations", "Cached or fetched records flipped to revoked."),
    ("backend_errors", "backend_errors", "Backend calls that failed (timeouts, errors, 5xx)."),
)


def gate_name(gate: Gate) -> str:
    """The default ``gate`` label: 8 hex chars of SHA-256 over the gate's settings.

    Stable across restarts and equal in every process configured alike. Secrets are
    left out (only their count enters the hash, and passwords in URLs are dropped);
    a backend given as an object counts by its class name.
    """
    parts: list[str] = []
    settings = gate.settings
    names = settings.keys()
    for key in names:
        value: Any = getattr(settings, key)
        if key == "invalidation_secret":
            value = len(value)
        elif key in ("backend", "bus") and isinstance(value, str):
            value = _without_password(value)
        elif key == "backend":
            value = f"{type(value).__module__}.{type(value).__qualname__}"
        parts.append(f"{key}={value!r}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


class _Totals:
    """Counters of the gates sharing one label, summed."""

    def __init__(self) -> None:
        self.cache: dict[str, int] = dict.fromkeys((key for key, _, _ in _CACHE_COUNTERS), 0)
        self.allowed = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECTION_REASONS, 0)
        self.unavailable = 0
        self.events: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.entries = 0
        self.max_entries = 0
        self.connected = 1
        self.gaps = 0
        self.reconnects = 0
        self.latency: list[Snapshot] = []
        self.lag: list[Snapshot] = []

    def add(self, gate: Gate) -> None:
        cache_stats = gate.cache.stats()
        for key in self.cache:
            self.cache[key] += int(cache_stats.get(key, 0))
        self.allowed += gate.allowed
        for reason, count in dict(gate.rejected).items():
            if reason == "backend_unavailable":
                self.unavailable += count
            else:
                self.rejected[reason] = self.rejected.get(reason, 0) + count
        for kind, count in dict(gate.events_applied).items():
            self.events[kind] = self.events.get(kind, 0) + count
        self.entries += len(gate.cache)
        self.max_entries += gate.settings.max_entries
        self.connected = min(self.connected, int(bool(gate.bus.connected)))
        bus_stats = _bus_stats(gate.bus)
        self.gaps += int(bus_stats.get("gaps", 0))
        self.reconnects += int(bus_stats.get("reconnects", 0))
        self.latency.append(gate.backend_latency.snapshot())
        self.lag.append(gate.revocation_lag.snapshot())


def _bus_stats(bus: object) -> Mapping[str, Any]:
    # Optional: the local bus has no stats; the Redis bus counts gaps and reconnects.
    stats = getattr(bus, "stats", None)
    if not callable(stats):
        return {}
    result = stats()
    return result if isinstance(result, Mapping) else {}


def _merged(snapshots: list[Snapshot]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (``le`` -> count, ``+Inf`` last) and the sum."""
    bounds = snapshots[0].bounds
    counts = [0] * len(bounds)
    total, count = 0.0, 0
    for snap in snapshots:
        if snap.bounds != bounds:  # never the case for histograms built by sessionmw
            continue
        for i, n in enumerate(snap.counts):
            counts[i] += n
        total += snap.sum
        count += snap.count
    buckets: list[tuple[str, float]] = [
        (_le(b), float(n)) for b, n in zip(bounds, counts, strict=True)
    ]
    buckets.append(("+Inf", float(count)))
    return buckets, total


def _le(bound: float) -> str:
    return repr(float(bound))


class SessionGateCollector(Collector):
    """A Prometheus collector reading the gates' counters at scrape time.

    ``gates``: ``None`` for every gate alive in the process (adapters share one per
    configuration, see :func:`sessionmw.gate.gate_for`), an iterable of gates
    (labelled by :func:`gate_name`), or a mapping of label -> gate.
    """

    def __init__(self, gates: Mapping[str, Gate] | Iterable[Gate] | None = None) -> None:
        if gates is None or isinstance(gates, Mapping):
            self._gates: Mapping[str, Gate] | list[Gate] | None = gates
        else:
            self._gates = list(gates)

    def _labelled(self) -> Iterator[tuple[str, Gate]]:
        if self._gates is None:
            for gate in live_gates():
                yield gate_name(gate), gate
        elif isinstance(self._gates, Mapping):
            yield from self._gates.items()
        else:
            for gate in self._gates:
                yield gate_name(gate), gate

    def _totals(self) -> dict[str, _Totals]:
        totals: dict[str, _Totals] = {}
        for name, gate in self._labelled():
            totals.setdefault(name, _Totals()).add(gate)
        return dict(sorted(totals.items()))

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering twice on one registry is refused up front.
        return list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._totals()))

    @staticmethod
    def _families(totals: Mapping[str, _Totals]) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "sessionmw_info", "sessionmw version (value is always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info

        def counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
            family = CounterMetricFamily(f"sessionmw_{name}", doc, labels=["gate"])
            for gate, t in totals.items():
                family.add_metric([gate], value(t))
            return family

        def gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"sessionmw_{name}", doc, labels=["gate"])
            for gate, t in totals.items():
                family.add_metric([gate], value(t))
            return family

        yield counter(
            "requests_allowed", "Requests with a valid session, passed to the app.", _get("allowed")
        )
        rejected = CounterMetricFamily(
            "sessionmw_requests_rejected",
            "Requests refused with 401, by reason (missing, malformed, unknown, revoked, expired).",
            labels=["gate", "reason"],
        )
        for gate, t in totals.items():
            for reason, count in sorted(t.rejected.items()):
                rejected.add_metric([gate, reason], count)
        yield rejected
        yield counter(
            "requests_backend_unavailable",
            "Requests refused with 503: backend unavailable and nothing servable.",
            _get("unavailable"),
        )
        for key, name, doc in _CACHE_COUNTERS:
            yield counter(name, doc, lambda t, key=key: t.cache[key])
        events = CounterMetricFamily(
            "sessionmw_invalidation_events",
            "Invalidation events applied to this process's cache, by type.",
            labels=["gate", "type"],
        )
        for gate, t in totals.items():
            for kind, count in sorted(t.events.items()):
                events.add_metric([gate, kind], count)
        yield events
        yield counter(
            "bus_gaps",
            "Bus gaps detected (entries trimmed unseen, stream deleted): each flushed the cache.",
            _get("gaps"),
        )
        yield counter("bus_reconnects", "Bus subscriber reconnections.", _get("reconnects"))
        yield gauge(
            "cache_entries", "Entries in the cache (LRU bound: max_entries).", _get("entries")
        )
        yield gauge("cache_max_entries", "The cache's LRU bound.", _get("max_entries"))
        yield gauge(
            "bus_connected", "1 while the invalidation bus is connected, else 0.", _get("connected")
        )
        for name, doc, attr in (
            ("backend_lookup_seconds", "Duration of backend calls (cache misses).", "latency"),
            (
                "revocation_lag_seconds",
                "Time from an event's publication on the bus to its application here.",
                "lag",
            ),
        ):
            family = HistogramMetricFamily(f"sessionmw_{name}", doc, labels=["gate"])
            for gate, t in totals.items():
                buckets, total = _merged(getattr(t, attr))
                family.add_metric([gate], buckets, total)
            yield family


def _get(attr: str) -> Any:
    return lambda t: getattr(t, attr)


def register_metrics(
    registry: CollectorRegistry | None = None,
    *,
    gates: Mapping[str, Gate] | Iterable[Gate] | None = None,
) -> SessionGateCollector:
    """Register a :class:`SessionGateCollector` on ``registry`` (default: the global one).

    Call it once per registry (prometheus_client refuses duplicate metric names).
    Returns the collector, for ``registry.unregister(collector)``.
    """
    collector = SessionGateCollector(gates)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
