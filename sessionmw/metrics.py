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

**Several worker processes.** With ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client's
multiprocess mode), a collector's values would stay per process. So in that mode
:func:`register_metrics` mirrors the gates' numbers into prometheus_client metric
objects, which write them to the directory's files: a background thread adds what
changed since its last pass (deltas, so nothing is counted twice) once a second,
at scrape time in the scraping process, before a fork, and at exit. The request path
still pays nothing: it only bumps the gate's own counters, as without metrics. A
scrape then reads the directory with :class:`prometheus_client.multiprocess.MultiProcessCollector`:
counters and histograms summed over every worker, live or exited; gauges summed (or
the minimum, for ``sessionmw_bus_connected``) over live workers.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sessionmw._compat import require_extra

with require_extra("prometheus_client", "prometheus", feature="sessionmw.metrics"):
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
    from prometheus_client import Histogram as PromHistogram
    from prometheus_client import values as prometheus_values
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector

from sessionmw import _fork
from sessionmw._histogram import BACKEND_LATENCY_BUCKETS, REVOCATION_LAG_BUCKETS, Snapshot
from sessionmw._log import get_logger
from sessionmw._version import __version__
from sessionmw.errors import ConfigError
from sessionmw.gate import Gate, live_gates, on_stop

__all__ = [
    "EVENT_SOURCES",
    "EVENT_TYPES",
    "REJECTION_REASONS",
    "SYNC_INTERVAL",
    "SessionGateCollector",
    "gate_name",
    "multiprocess_mode",
    "register_metrics",
]

#: Reasons a request is refused with 401 (the ``reason`` label); always exported.
REJECTION_REASONS = ("missing", "malformed", "unknown", "revoked", "expired")
#: Invalidation event types (the ``type`` label); always exported.
EVENT_TYPES = ("session_revoked", "user_sessions_revoked", "flush")
#: Where invalidation events come from (the ``source`` label); always exported.
EVENT_SOURCES = ("hook", "bus", "oidc", "ssf")
#: Seconds between two passes of the multiprocess mirror's background thread.
SYNC_INTERVAL = 1.0
#: The variable that switches prometheus_client to multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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

#: Every counter family: name without ``sessionmw_`` -> (help, second label or None,
#: the values of that label exported even at zero).
_COUNTERS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "requests_allowed": ("Requests with a valid session, passed to the app.", None, ()),
    "requests_rejected": (
        "Requests refused with 401, by reason (missing, malformed, unknown, revoked, expired).",
        "reason",
        REJECTION_REASONS,
    ),
    "requests_backend_unavailable": (
        "Requests refused with 503: backend unavailable and nothing servable.",
        None,
        (),
    ),
    **{name: (doc, None, ()) for _, name, doc in _CACHE_COUNTERS},
    "invalidation_events": (
        "Invalidation events applied to this process's cache, by type.",
        "type",
        EVENT_TYPES,
    ),
    "invalidation_events_received": (
        "Invalidation events received, by source (hook, bus, oidc, ssf).",
        "source",
        EVENT_SOURCES,
    ),
    "bus_gaps": (
        "Bus gaps detected (entries trimmed unseen, stream deleted): each flushed the cache.",
        None,
        (),
    ),
    "bus_reconnects": ("Bus subscriber reconnections.", None, ()),
}

#: Gauge families: name -> (help, multiprocess mode).
_GAUGES = {
    "cache_entries": ("Entries in the cache (LRU bound: max_entries).", "livesum"),
    "cache_max_entries": ("The cache's LRU bound.", "livesum"),
    "bus_connected": ("1 while the invalidation bus is connected, else 0.", "livemin"),
}

#: Histogram families: name -> (help, bounds, Gate attribute).
_HISTOGRAMS = {
    "backend_lookup_seconds": (
        "Duration of backend calls (cache misses).",
        BACKEND_LATENCY_BUCKETS,
        "backend_latency",
    ),
    "revocation_lag_seconds": (
        "Time from an event's publication on the bus to its application here.",
        REVOCATION_LAG_BUCKETS,
        "revocation_lag",
    ),
}

_INFO_DOC = "sessionmw version (value is always 1)."

#: One counter series of a gate: (family, value of its second label or "").
CounterKey = tuple[str, str]


def multiprocess_mode() -> bool:
    """True when prometheus_client runs in multiprocess mode in this process.

    prometheus_client decides once, when it is first imported: metric values go to
    files in ``PROMETHEUS_MULTIPROC_DIR`` if that variable was set then.
    """
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


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


# -- reading a gate ----------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """One gate's numbers at one moment."""

    counters: dict[CounterKey, int]
    entries: int
    max_entries: int
    connected: int
    histograms: dict[str, Snapshot]


def _read(gate: Gate) -> _Reading:
    counters: dict[CounterKey, int] = {("requests_allowed", ""): gate.allowed}
    for reason, count in dict(gate.rejected).items():
        if reason == "backend_unavailable":
            counters["requests_backend_unavailable", ""] = count
        else:
            counters["requests_rejected", reason] = count
    cache_stats = gate.cache.stats()
    for key, name, _ in _CACHE_COUNTERS:
        counters[name, ""] = int(cache_stats.get(key, 0))
    for kind, count in dict(gate.events_applied).items():
        counters["invalidation_events", kind] = count
    for source, count in dict(gate.events_received).items():
        counters["invalidation_events_received", source] = count
    bus_stats = _bus_stats(gate.bus)
    counters["bus_gaps", ""] = int(bus_stats.get("gaps", 0))
    counters["bus_reconnects", ""] = int(bus_stats.get("reconnects", 0))
    return _Reading(
        counters=counters,
        entries=len(gate.cache),
        max_entries=gate.settings.max_entries,
        connected=int(bool(gate.bus.connected)),
        histograms={
            name: getattr(gate, attr).snapshot() for name, (_, _, attr) in _HISTOGRAMS.items()
        },
    )


def _bus_stats(bus: object) -> Mapping[str, Any]:
    # Optional: the local bus has no stats; the Redis bus counts gaps and reconnects.
    stats = getattr(bus, "stats", None)
    if not callable(stats):
        return {}
    result = stats()
    return result if isinstance(result, Mapping) else {}


class _Totals:
    """The readings of the gates sharing one label, summed."""

    def __init__(self) -> None:
        self.counters: dict[CounterKey, int] = {}
        for name, (_, label, fixed) in _COUNTERS.items():
            for value in fixed if label else ("",):
                self.counters[name, value] = 0
        self.entries = 0
        self.max_entries = 0
        self.connected = 1
        self.histograms: dict[str, list[Snapshot]] = {name: [] for name in _HISTOGRAMS}

    def add(self, reading: _Reading) -> None:
        for key, count in reading.counters.items():
            self.counters[key] = self.counters.get(key, 0) + count
        self.entries += reading.entries
        self.max_entries += reading.max_entries
        self.connected = min(self.connected, reading.connected)
        for name, snapshot in reading.histograms.items():
            self.histograms[name].append(snapshot)


def _merged(
    snapshots: list[Snapshot], bounds: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (``le`` -> count, ``+Inf`` last) and the sum."""
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


GateSpec = Mapping[str, Gate] | Iterable[Gate] | None


def _labelled(gates: Mapping[str, Gate] | list[Gate] | None) -> Iterator[tuple[str, Gate]]:
    if gates is None:
        for gate in live_gates():
            yield gate_name(gate), gate
    elif isinstance(gates, Mapping):
        yield from gates.items()
    else:
        for gate in gates:
            yield gate_name(gate), gate


def _normalised(gates: GateSpec) -> Mapping[str, Gate] | list[Gate] | None:
    if gates is None or isinstance(gates, Mapping):
        return gates
    return list(gates)


# -- one process: read at scrape time ----------------------------------------------


class SessionGateCollector(Collector):
    """A Prometheus collector reading the gates' counters at scrape time.

    ``gates``: ``None`` for every gate alive in the process (adapters share one per
    configuration, see :func:`sessionmw.gate.gate_for`), an iterable of gates
    (labelled by :func:`gate_name`), or a mapping of label -> gate.
    """

    def __init__(self, gates: GateSpec = None) -> None:
        self._gates = _normalised(gates)

    def _totals(self) -> dict[str, _Totals]:
        totals: dict[str, _Totals] = {}
        for name, gate in _labelled(self._gates):
            totals.setdefault(name, _Totals()).add(_read(gate))
        return dict(sorted(totals.items()))

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering twice on one registry is refused up front.
        return list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._totals()))

    @staticmethod
    def _families(totals: Mapping[str, _Totals]) -> Iterator[Metric]:
        info = GaugeMetricFamily("sessionmw_info", _INFO_DOC, labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        for name, (doc, label, _) in _COUNTERS.items():
            counter = CounterMetricFamily(
                f"sessionmw_{name}", doc, labels=["gate", label] if label else ["gate"]
            )
            for gate, t in totals.items():
                for (counted, value), count in sorted(t.counters.items()):
                    if counted == name:
                        counter.add_metric([gate, value] if label else [gate], count)
            yield counter
        for name, (doc, _mode) in _GAUGES.items():
            gauge = GaugeMetricFamily(f"sessionmw_{name}", doc, labels=["gate"])
            for gate, t in totals.items():
                gauge.add_metric([gate], _gauge_value(t, name))
            yield gauge
        for name, (doc, bounds, _attr) in _HISTOGRAMS.items():
            histogram = HistogramMetricFamily(f"sessionmw_{name}", doc, labels=["gate"])
            for gate, t in totals.items():
                buckets, total = _merged(t.histograms[name], bounds)
                histogram.add_metric([gate], buckets, total)
            yield histogram


def _gauge_value(totals: _Totals, name: str) -> int:
    if name == "cache_entries":
        return totals.entries
    if name == "cache_max_entries":
        return totals.max_entries
    return totals.connected


# -- several processes: mirrored into prometheus_client's multiprocess files --------


class _Metrics:
    """The prometheus_client metric objects the mirror writes to (one set per process:
    two objects of one name would overwrite each other's slot in the process's file)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.counters: dict[str, Counter] = {}
        for name, (doc, label, _) in _COUNTERS.items():
            labels = ("gate", label) if label else ("gate",)
            self.counters[name] = Counter(f"sessionmw_{name}", doc, labels, registry=registry)
        self.gauges: dict[str, Gauge] = {}
        for name, (doc, mode) in _GAUGES.items():
            self.gauges[name] = Gauge(
                f"sessionmw_{name}",
                doc,
                ("gate",),
                registry=registry,
                multiprocess_mode=mode,  # type: ignore[arg-type]
            )
        self.histograms: dict[str, PromHistogram] = {}
        for name, (doc, bounds, _) in _HISTOGRAMS.items():
            self.histograms[name] = PromHistogram(
                f"sessionmw_{name}", doc, ("gate",), registry=registry, buckets=bounds
            )
        info = Gauge(
            "sessionmw_info",
            _INFO_DOC,
            ("version",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        info.labels(version=__version__).set(1)
        self.labels: set[str] = set()

    def add_label(self, gate: str) -> None:
        """Create a new ``gate`` label's series at zero, as the collector exports them."""
        if gate in self.labels:
            return
        self.labels.add(gate)
        for name, (_, label, fixed) in _COUNTERS.items():
            counter = self.counters[name]
            for value in fixed if label else ("",):
                (counter.labels(gate, value) if label else counter.labels(gate)).inc(0)
        for histogram in self.histograms.values():
            histogram.labels(gate)

    def inc(self, key: CounterKey, gate: str, amount: int) -> None:
        name, value = key
        counter = self.counters[name]
        (counter.labels(gate, value) if value else counter.labels(gate)).inc(amount)


def _slots(snapshot: Snapshot) -> list[int]:
    """Observations per bucket (not cumulative), the overflow (+Inf) slot last."""
    slots, below = [], 0
    for cumulative in snapshot.counts:
        slots.append(cumulative - below)
        below = cumulative
    slots.append(snapshot.count - below)
    return slots


def _add_observations(
    child: Any, bounds: tuple[float, ...], slots: list[int], total: float
) -> None:
    """Add per-bucket counts and their sum to a prometheus_client histogram child."""
    buckets = getattr(child, "_buckets", None)
    summed = getattr(child, "_sum", None)
    if isinstance(buckets, list) and len(buckets) == len(slots) and summed is not None:
        for value, n in zip(buckets, slots, strict=True):
            if n:
                value.inc(n)
        summed.inc(total)
        return
    # A prometheus_client whose histogram keeps its buckets elsewhere: observe each
    # bucket's upper bound (the counts stay exact, the sum is approximate).
    uppers = [*bounds, bounds[-1]]
    for bound, n in zip(uppers, slots, strict=True):
        for _ in range(n):
            child.observe(bound)


class _Mirror:
    """Adds what the gates counted since the last pass to prometheus_client metrics.

    Each (gate, label) remembers the reading it last pushed; a pass pushes the
    difference and remembers the new reading, under one lock, so concurrent passes
    (the background thread, a scrape, exit) never push the same increment twice. A
    counter that went down was reset (a bus's counters after a fork): its whole new
    value is pushed. Gauges are set, from the gates that have started (a pre-forking
    server's master builds gates but serves nothing).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, interval: float = SYNC_INTERVAL
    ) -> None:
        self.metrics = _Metrics(registry)
        self.interval = interval
        self._sources: list[Mapping[str, Gate] | list[Gate] | None] = []
        self._pushed: weakref.WeakKeyDictionary[Gate, dict[str, _Reading]] = (
            weakref.WeakKeyDictionary()
        )
        self._gauge_labels: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._failed = False
        _MIRRORS.add(self)
        _fork.register(self)

    def add(self, gates: GateSpec) -> None:
        """Mirror these gates too (``None``: every gate alive at each pass)."""
        with self._lock:
            self._sources.append(_normalised(gates))

    def sync(self) -> None:
        """Push what changed since the last pass (thread-safe)."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        seen: set[tuple[str, int]] = set()
        gauges: dict[str, _Totals] = {}
        for source in self._sources:
            for label, gate in _labelled(source):
                if (label, id(gate)) in seen:
                    continue
                seen.add((label, id(gate)))
                reading = _read(gate)
                pushed = self._pushed.setdefault(gate, {})
                self._push(label, pushed.get(label), reading)
                pushed[label] = reading
                if gate.started:
                    gauges.setdefault(label, _Totals()).add(reading)
        for label, totals in gauges.items():
            for name, gauge in self.metrics.gauges.items():
                gauge.labels(label).set(_gauge_value(totals, name))
        for label in self._gauge_labels - gauges.keys():
            # No started gate under this label any more: nothing cached, nothing down.
            self.metrics.gauges["cache_entries"].labels(label).set(0)
            self.metrics.gauges["cache_max_entries"].labels(label).set(0)
            self.metrics.gauges["bus_connected"].labels(label).set(1)
        self._gauge_labels |= gauges.keys()

    def _push(self, label: str, before: _Reading | None, now: _Reading) -> None:
        metrics = self.metrics
        metrics.add_label(label)
        for key, value in now.counters.items():
            last = before.counters.get(key, 0) if before is not None else 0
            delta = value - last if value >= last else value
            if delta > 0:
                metrics.inc(key, label, delta)
        for name, snapshot in now.histograms.items():
            bounds = _HISTOGRAMS[name][1]
            if snapshot.bounds != bounds:
                continue
            slots = _slots(snapshot)
            total = snapshot.sum
            previous = before.histograms.get(name) if before is not None else None
            if previous is not None and previous.count <= snapshot.count:
                slots = [a - b for a, b in zip(slots, _slots(previous), strict=True)]
                total -= previous.sum
            if any(slots):
                child = metrics.histograms[name].labels(label)
                _add_observations(child, bounds, slots, total)

    # -- the background thread ----------------------------------------------------

    def start(self) -> None:
        """Start the background pass (idempotent)."""
        with self._lock:
            self._running = True
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="sessionmw-metrics", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop the background pass, after a last one (exit)."""
        with self._lock:
            self._running = False
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._safe_sync()

    def _run(self, stop: threading.Event) -> None:
        # A pass at once: in a forked child, this replaces the gauge values its
        # metric objects were reset to with its own.
        self._safe_sync()
        while not stop.wait(self.interval):
            self._safe_sync()

    def _safe_sync(self) -> None:
        try:
            self.sync()
        except Exception:  # metrics must never take the worker down
            if not self._failed:
                self._failed = True
                get_logger().exception("metrics.sync_failed")

    # -- fork ------------------------------------------------------------------------

    def _before_fork(self) -> None:
        # Push everything, then hold the lock through the fork: the child inherits
        # readings equal to what the parent pushed, so it pushes only its own counts
        # (its metric objects start from zero in a file of its own), and our thread
        # is not inside a prometheus_client write (whose lock the child would inherit
        # held) when the fork happens.
        self._lock.acquire()
        try:
            self._sync_locked()
        except Exception:
            get_logger().exception("metrics.sync_failed")

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        if self._running:
            self.start()


_MIRRORS: weakref.WeakSet[_Mirror] = weakref.WeakSet()
_process_mirror: _Mirror | None = None
_process_lock = threading.Lock()


_forking: list[_Mirror] = []  # the mirrors locked for the fork under way


def _before_fork() -> None:
    for mirror in list(_MIRRORS):
        mirror._before_fork()
        _forking.append(mirror)


def _after_fork_in_parent() -> None:
    while _forking:
        _forking.pop()._after_fork_in_parent()


def _after_fork_in_child() -> None:
    _forking.clear()  # their locks are replaced (_Mirror._reset_after_fork)


def _at_exit() -> None:
    for mirror in list(_MIRRORS):
        mirror.stop()


def _gate_stopped(gate: Gate) -> None:
    # A worker's last moment may be its ASGI lifespan shutdown (uvicorn under gunicorn
    # ends by re-raising SIGTERM, so atexit never runs): write what it counted.
    for mirror in list(_MIRRORS):
        mirror._safe_sync()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
atexit.register(_at_exit)
on_stop(_gate_stopped)


def _mirror() -> _Mirror:
    global _process_mirror
    with _process_lock:
        if _process_mirror is None:
            _process_mirror = _Mirror()
        return _process_mirror


class _SyncOnScrape(Collector):
    """Registered in multiprocess mode: brings this process's numbers up to date in
    the directory when the registry is collected. It reports nothing itself."""

    def __init__(self, mirror: _Mirror) -> None:
        self._mirror = mirror

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self._mirror.sync()
        return []


def register_metrics(
    registry: CollectorRegistry | None = None,
    *,
    gates: Mapping[str, Gate] | Iterable[Gate] | None = None,
) -> Collector:
    """Export the gates' metrics through ``registry`` (default: the global one).

    In one process: registers a :class:`SessionGateCollector` (once per registry:
    prometheus_client refuses duplicate metric names). In multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR``, see :func:`multiprocess_mode`): mirrors the gates
    into the directory's files from a background thread, and registers on
    ``registry`` a collector that only brings this process's numbers up to date when
    it is collected; register it before the registry's
    :class:`~prometheus_client.multiprocess.MultiProcessCollector`. Returns the
    collector, for ``registry.unregister(collector)``.
    """
    target = REGISTRY if registry is None else registry
    if multiprocess_mode():
        # (prometheus_client still honours the deprecated lower-case spelling.)
        directory = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower(), "")
        if not os.path.isdir(directory):
            raise ConfigError(
                MULTIPROC_ENV,
                f"{directory!r} is not a directory: create it, empty, before the server starts",
            )
        mirror = _mirror()
        mirror.add(gates)
        mirror.start()
        sync = _SyncOnScrape(mirror)
        target.register(sync)
        return sync
    collector = SessionGateCollector(gates)
    target.register(collector)
    return collector
