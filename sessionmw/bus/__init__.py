"""Invalidation buses: how an event reaches every process (SPEC section 8, bus).

A bus publishes events (from the hook or the CLI) and, in every process, runs one
subscriber that applies the events it reads to that process's cache. ``local://``
is the single-process bus: publishing is a no-op because the hook already applied
the events locally. ``redis://`` uses a Redis Stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from sessionmw._compat import require_extra
from sessionmw.errors import ConfigError
from sessionmw.events import Event
from sessionmw.replay import LocalReplayGuard, ReplayGuard

if TYPE_CHECKING:
    from sessionmw.cache import MemoryCache

__all__ = ["Bus", "LocalBus", "bus_from_url"]


class Bus(Protocol):
    """What a gate needs from a bus."""

    @property
    def connected(self) -> bool: ...

    def start(self, cache: MemoryCache, apply: Callable[[Event], None]) -> None:
        """Start this process's subscriber (idempotent; called in the worker, after fork)."""
        ...

    def stop(self) -> None:
        """Stop the subscriber and release connections (idempotent)."""
        ...

    def publish(self, events: Sequence[Event]) -> None:
        """Make the events reach every process; raises BusUnavailable."""
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

    @property
    def connected(self) -> bool:
        return True

    def start(self, cache: MemoryCache, apply: Callable[[Event], None]) -> None:
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


def bus_from_url(url: str, *, stream: str, outage_ttl: float) -> Bus:
    """Build the bus a ``bus`` setting names."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "local":
        return LocalBus()
    if scheme in ("redis", "rediss", "unix"):
        with require_extra("redis", "redis", feature="the redis:// bus"):
            from sessionmw.bus.redis import RedisBus

        return RedisBus(url, stream=stream, outage_ttl=outage_ttl)
    raise ConfigError("bus", f"unsupported URL scheme {scheme!r}")
