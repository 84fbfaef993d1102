"""Fixed-bucket histograms kept by the core, read at scrape time by :mod:`sessionmw.metrics`.

The core must not depend on ``prometheus_client``, and the request hot path must
not pay for metrics. So the few places that time something (a backend call on a
cache miss, an event arriving over the bus) record into a :class:`Histogram`: a
bisect into a short tuple of bounds and three additions under a lock, far below the
cost of the backend round trip or bus read it measures. The exporter turns the
counts into a Prometheus histogram only when it is scraped.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BACKEND_LATENCY_BUCKETS", "REVOCATION_LAG_BUCKETS", "Histogram", "Snapshot"]

#: Seconds. A backend call is a local dict (µs), SQL/Redis on a LAN (ms) or an HTTP
#: auth service (tens of ms); ``backend_timeout`` defaults to 2 s.
BACKEND_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: Seconds from an event's publication to its application in this process.
REVOCATION_LAG_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy: ``counts[i]`` observations fell at or below ``bounds[i]``
    (cumulative, Prometheus style); ``count`` includes those above the last bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float


class Histogram:
    """Counts observations into fixed buckets; thread-safe, allocation-free per call.

    >>> h = Histogram((0.1, 1.0))
    >>> for v in (0.05, 0.5, 7.0):
    ...     h.observe(v)
    >>> h.snapshot().counts, h.snapshot().count
    ((1, 2), 3)
    """

    __slots__ = ("_bounds", "_buckets", "_count", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        ordered = tuple(float(b) for b in bounds)
        if not ordered or list(ordered) != sorted(set(ordered)):
            raise ValueError("bounds must be a non-empty, strictly increasing sequence")
        self._bounds = ordered
        # One slot per bound plus an overflow slot (+Inf).
        self._buckets = [0] * (len(ordered) + 1)
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def observe(self, value: float) -> None:
        """Record one observation (negative values, e.g. from clock skew, count as 0)."""
        if value < 0:
            value = 0.0
        slot = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._buckets[slot] += 1
            self._count += 1
            self._sum += value

    def snapshot(self) -> Snapshot:
        with self._lock:
            buckets = list(self._buckets)
            count, total = self._count, self._sum
        cumulative: list[int] = []
        running = 0
        for n in buckets[:-1]:
            running += n
            cumulative.append(running)
        return Snapshot(self._bounds, tuple(cumulative), count, total)

    def reset(self) -> None:
        """Forget every observation (after a fork: the child starts from zero)."""
        with self._lock:
            self._buckets = [0] * (len(self._bounds) + 1)
            self._count = 0
            self._sum = 0.0

    def _after_fork(self) -> None:
        # A lock held by another thread at fork time stays held forever in the child.
        self._lock = threading.Lock()
