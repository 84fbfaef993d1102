"""Network clients built on first use, per process and per event loop.

Shared by the Redis and HTTP backends and the Redis bus's producers: one sync
client, built on first use; one async client per event loop (an asyncio connection
belongs to the loop that opened it), kept in a ``WeakKeyDictionary`` so a finished
loop's client can go with it; or the clients a caller gave, used as they are and
never closed here. A process that forks drops the clients it inherited, without
closing them (the parent still uses those sockets), and builds its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from sessionmw import _fork

__all__ = ["Clients"]


class _Closable(Protocol):
    def close(self) -> None: ...


class _AsyncClosable(Protocol):
    def aclose(self) -> Awaitable[None]: ...


S = TypeVar("S", bound=_Closable)
A = TypeVar("A", bound=_AsyncClosable)


class Clients(Generic[S, A]):
    """A sync client and one async client per event loop, built by the given factories.

    ``given_sync`` / ``given_async``: clients the caller owns; they are returned
    instead of building one and are never closed here. Without ``build_async`` (and
    ``given_async``) only the sync side is available.
    """

    def __init__(
        self,
        build_sync: Callable[[], S],
        build_async: Callable[[], A] | None = None,
        *,
        given_sync: S | None = None,
        given_async: A | None = None,
    ) -> None:
        self._build_sync = build_sync
        self._build_async = build_async
        self.given_sync = given_sync
        self.given_async = given_async
        self._sync: S | None = given_sync
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, A] = (
            weakref.WeakKeyDictionary()
        )
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _fork.register(self)

    def _reset_after_fork(self) -> None:
        # A lock held by a parent thread at fork time would never be released here.
        self._lock = threading.Lock()

    @property
    def sync_only(self) -> bool:
        """True when the caller gave a sync client and no async one (the async path
        then runs the sync client in a worker thread)."""
        return self.given_sync is not None and self.given_async is None

    def _drop_if_forked(self) -> None:
        # Called with the lock held.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._sync = self.given_sync
            self._async = weakref.WeakKeyDictionary()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's lock and clients (without closing them)."""
        self._lock = threading.Lock()
        with self._lock:
            self._drop_if_forked()

    def sync(self) -> S:
        """The sync client, built on first use in this process."""
        client = self._sync
        if client is not None and self._pid == os.getpid():
            return client
        with self._lock:
            self._drop_if_forked()
            if self._sync is None:
                self._sync = self._build_sync()
            return self._sync

    def for_loop(self) -> A:
        """The given async client, else the running event loop's own (built on first use)."""
        if self.given_async is not None:
            return self.given_async
        if self._build_async is None:
            raise RuntimeError("no async client here")
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drop_if_forked()
            client = self._async.get(loop)
            if client is None:
                client = self._async[loop] = self._build_async()
            return client

    def close(self) -> None:
        """Close the sync client built here. Async clients are closed by :meth:`aclose`
        on their own loop; those left are dropped."""
        with self._lock:
            self._drop_if_forked()
            client, self._sync = self._sync, self.given_sync
            self._async = weakref.WeakKeyDictionary()
        if client is not None and client is not self.given_sync:
            client.close()

    async def aclose(self) -> None:
        """Close the running loop's async client built here, then the sync client."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drop_if_forked()
            client = self._async.pop(loop, None)
        if client is not None:
            await client.aclose()
        self.close()
