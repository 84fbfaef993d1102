"""Remembering ``webhook-id`` values so a retried hook call is applied once.

The in-process guard keeps a 16-byte digest per ID (not the ID itself), so its
memory is bounded by count alone: at most ``max_ids`` entries of fixed size (about
120 bytes each, 12 MB at the default 100,000). When full, the oldest IDs are
forgotten before their window ends; a producer's retry of such an old call is then
applied again, which is harmless: every event is idempotent (revoking twice, or
flushing twice, ends in the same state).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from sessionmw._log import BUS_DISCONNECTED, get_logger

__all__ = ["LocalReplayGuard", "ReplayGuard", "SharedReplayGuard", "digest"]


def digest(webhook_id: str) -> bytes:
    """A fixed-size stand-in for an ID of any length."""
    return hashlib.sha256(webhook_id.encode("utf-8", "surrogatepass")).digest()[:16]


class ReplayGuard(Protocol):
    """Claims a webhook ID for the tolerance window; a second claim fails."""

    def claim(self, webhook_id: str) -> bool:
        """True if the ID was not seen within the window (and is now remembered)."""
        ...

    def release(self, webhook_id: str) -> None:
        """Forget an ID whose delivery could not be completed, so a retry is applied."""
        ...

    async def aclaim(self, webhook_id: str) -> bool: ...

    async def arelease(self, webhook_id: str) -> None: ...


class LocalReplayGuard:
    """In-process replay memory, bounded in size and time (``local://`` bus)."""

    def __init__(
        self,
        window: float = 600.0,
        max_ids: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max = max_ids
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, webhook_id: str) -> bool:
        key = digest(webhook_id)
        now = self._clock()
        with self._lock:
            seen = self._seen
            while seen:
                oldest, expiry = next(iter(seen.items()))
                if expiry > now and len(seen) < self._max:
                    break
                del seen[oldest]
            previous = seen.get(key)
            if previous is not None and previous > now:
                return False
            seen[key] = now + self._window
            seen.move_to_end(key)
            return True

    def release(self, webhook_id: str) -> None:
        with self._lock:
            self._seen.pop(digest(webhook_id), None)

    async def aclaim(self, webhook_id: str) -> bool:
        return self.claim(webhook_id)

    async def arelease(self, webhook_id: str) -> None:
        self.release(webhook_id)

    def reset(self) -> None:
        """Recreate the lock (after a fork)."""
        self._lock = threading.Lock()


class SharedReplayGuard:
    """Base of the guards kept where the bus lives (Redis, PostgreSQL), shared by
    every process: a subclass gives the blocking :meth:`claim` (raising
    :class:`~sessionmw.BusUnavailable` when the server does not answer) and
    :meth:`_forget`. :meth:`release` never raises, and the async forms run the
    blocking ones in a worker thread."""

    def claim(self, webhook_id: str) -> bool:
        raise NotImplementedError

    def _forget(self, webhook_id: str) -> None:
        raise NotImplementedError

    def release(self, webhook_id: str) -> None:
        try:
            self._forget(webhook_id)
        except Exception as exc:  # must never raise
            get_logger().warning(
                BUS_DISCONNECTED, problem="replay guard release failed", error=type(exc).__name__
            )

    async def aclaim(self, webhook_id: str) -> bool:
        return await asyncio.to_thread(self.claim, webhook_id)

    async def arelease(self, webhook_id: str) -> None:
        await asyncio.to_thread(self.release, webhook_id)
