"""Invalidation buses: how an event reaches every process (SPEC section 8, bus).

A bus publishes events (from the hook, ``Sessions`` or the CLI) and, in every
process, runs one subscriber that reports what it reads to a :class:`BusSink`: the
gate, which applies events to its cache and owns the policy around them (the outage
TTL while disconnected, the flush on a gap, the lag histogram). A bus never touches
a cache itself.

``local://`` is the single-process bus: publishing is a no-op because the events
were already applied where they were received. ``redis://`` (and ``rediss://``,
``unix://``) uses a Redis Stream; ``postgresql://`` a table plus LISTEN/NOTIFY.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sessionmw._compat import require_extra
from sessionmw.errors import ConfigError
from sessionmw.events import Event
from sessionmw.replay import LocalReplayGuard, ReplayGuard
from sessionmw.settings import scheme_kind

__all__ = ["Bus", "BusSink", "LocalBus", "bus_from_url", "publish"]


class BusSink(Protocol):
    """Where a bus subscriber reports; the gate implements it."""

    def bus_event(self, event: Event, sent_at: float | None) -> None:
        """Apply one event read from the bus (``sent_at``: the publisher's wall clock)."""
        ...

    def bus_connected(self) -> None:
        """The subscriber is connected and has read up to the stream's end."""
        ...

    def bus_disconnected(self) -> None:
        """The subscriber is not (or not yet) connected: events may be missed."""
        ...

    def bus_gap(self, reason: str) -> None:
        """Events this process had not seen are gone: what it cached may be stale."""
        ...


class Bus(Protocol):
    """What a gate needs from a bus."""

    @property
    def connected(self) -> bool: ...

    def start(self, sink: BusSink) -> None:
        """Start this process's subscriber (idempotent; called in the worker, after fork)."""
        ...

    def stop(self) -> None:
        """Stop the subscriber and release connections (idempotent)."""
        ...

    def publish(self, events: Sequence[Event]) -> None:
        """Make the events reach every process, whole batch or nothing; raises
        :class:`~sessionmw.BusUnavailable`."""
        ...

    async def apublish(self, events: Sequence[Event]) -> None: ...

    @property
    def replay_guard(self) -> ReplayGuard: ...

    def after_fork(self) -> None:
        """Drop threads, locks and connections inherited from the parent process."""
        ...


class LocalBus:
    """This process only: events are applied where they are received."""

    def __init__(self) -> None:
        self._guard = LocalReplayGuard()

    def __repr__(self) -> str:
        return "<LocalBus>"

    @property
    def connected(self) -> bool:
        return True

    def start(self, sink: BusSink) -> None:
        return None

    def stop(self) -> None:
        return None

    def publish(self, events: Sequence[Event]) -> None:
        return None

    async def apublish(self, events: Sequence[Event]) -> None:
        return None

    @property
    def replay_guard(self) -> ReplayGuard:
        return self._guard

    def after_fork(self) -> None:
        self._guard.reset()


def bus_from_url(url: str, *, stream: str, timeout: float = 2.0, retention: float = 86400.0) -> Bus:
    """Build the bus a ``bus`` setting names (the driver is imported here, at start-up).

    ``retention``: seconds a ``postgresql://`` bus keeps events (``bus_retention``)."""
    kind = scheme_kind("bus", url)
    if kind == "local":
        return LocalBus()
    if kind == "redis":
        with require_extra("redis", "redis", feature="the redis:// bus"):
            from sessionmw.bus.redis import RedisBus

        return RedisBus(url, stream=stream, timeout=timeout)
    if kind == "postgres":
        with require_extra("psycopg", "postgres", feature="the postgresql:// bus"):
            from sessionmw.bus.postgres import PostgresBus

        return PostgresBus(url, retention=retention, timeout=timeout)
    raise ConfigError("bus", f"unsupported URL {url.split(':', 1)[0]!r}")


def publish(
    url: str,
    events: Sequence[Event],
    *,
    stream: str,
    timeout: float = 2.0,
    retention: float = 86400.0,
) -> list[str]:
    """Publish events once, without a subscriber (``sessionmw revoke --bus``, scripts).

    Returns the IDs the bus gave the events, where it has such IDs (stream entries,
    row ids). Raises :class:`~sessionmw.BusUnavailable` when the bus cannot take them.
    """
    bus = bus_from_url(url, stream=stream, timeout=timeout, retention=retention)
    if isinstance(bus, LocalBus):
        raise ConfigError(
            "bus", "local:// reaches no other process; give a redis:// or postgresql:// URL"
        )
    try:
        publish_ids = getattr(bus, "publish_ids", None)
        if callable(publish_ids):
            return list(publish_ids(events))
        bus.publish(events)
        return []
    finally:
        bus.stop()
