"""Session activity: ``last_seen`` write-behind and the idle timeout (SPEC section 11).

The request path only records the time of each allowed request in its cache
entry (:meth:`~sessionmw.cache.MemoryCache.hit` stores its clock reading in the
entry's CLOCK mark, which it writes anyway: no lock, no I/O, no extra store).
One :class:`ActivityFlusher` per gate and process takes those records in a
background thread and

* writes ``last_seen`` to the store, batched (one ``touch_many`` call: one statement
  or one pipeline), at most once per session per ``touch_interval``, and once more
  on shutdown; a store that is down delays the write to the next round, never a
  request;
* with ``idle_timeout``, drops from the cache every session whose last known
  activity (the later of this process's requests and the store's ``last_seen``) is
  older than the timeout, so its next request takes the full path, which re-reads
  the store before refusing it (:meth:`ActivityFlusher.idle`). A session in steady
  use through other workers is therefore never refused: their flushes keep the
  store's ``last_seen`` within ``touch_interval`` of now.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sessionmw._log import cause, get_logger
from sessionmw.cache import MemoryCache

__all__ = ["ActivityFlusher", "Toucher"]

TOUCH_FAILED = "session.touch_failed"
#: Sessions waiting for a write while the store is down, at most (the oldest are
#: dropped beyond it: their next request records them again).
MAX_PENDING = 100_000


class Toucher(Protocol):
    def touch_many(self, items: Sequence[tuple[str, float]]) -> None: ...


class ActivityFlusher:
    """The background half of activity tracking for one cache and store."""

    def __init__(
        self,
        cache: MemoryCache,
        store: Any,
        *,
        touch_interval: float,
        idle_timeout: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.store = store if callable(getattr(store, "touch_many", None)) else None
        self.touch_interval = touch_interval
        self.idle_timeout = idle_timeout
        # How often the thread wakes: every touch_interval, and often enough that an
        # idle session is dropped within a few percent of the timeout.
        self.tick = touch_interval if not idle_timeout else min(touch_interval, idle_timeout / 20)
        self.clock = clock
        #: session ID -> wall time of its last known activity (requests here, or the
        #: store's last_seen when fetched).
        self.latest: dict[str, float] = {}
        #: session ID -> last_seen still to be written.
        self.pending: dict[str, float] = {}
        self.writes = 0
        self.failures = 0
        self._failing = 0
        self._last_flush = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = get_logger()
        if idle_timeout:  # latest is what idleness is judged by; nothing else reads it
            cache.set_fetch_observer(self.fetched)
        cache.track_activity = True

    # -- called from request threads (full path only) ----------------------------

    def fetched(self, session_id: str, last_seen: float) -> None:
        """The store's ``last_seen`` of a session just fetched (cache observer)."""
        with self._lock:
            if last_seen > self.latest.get(session_id, 0.0):
                self.latest[session_id] = last_seen

    def idle(self, session_id: str) -> bool:
        """True when the session's last known activity is older than ``idle_timeout``.

        Call it only with what the store said just now (after a fetch): the full path
        re-reads the store before it refuses a session for idleness."""
        if not self.idle_timeout:
            return False
        self.collect()
        with self._lock:
            last = self.latest.get(session_id)
        return last is not None and self.clock() - last > self.idle_timeout

    # -- the background thread ---------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="sessionmw-activity", daemon=True
        )
        self._thread.start()
        _register_atexit(self)

    def stop(self) -> None:
        """Stop the thread and write what is pending (shutdown)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self.flush()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # the flusher must outlive bugs and odd stores
                self._log.exception(TOUCH_FAILED, problem="activity flusher error")

    def collect(self) -> None:
        """Move the cache's recorded requests into ``latest`` and ``pending``."""
        taken = self.cache.take_activity()
        if not taken:
            return
        with self._lock:
            latest, pending = self.latest, self.pending
            track_latest = bool(self.idle_timeout)
            for key, when in taken.items():
                if track_latest and when > latest.get(key, 0.0):
                    latest[key] = when
                if when > pending.get(key, 0.0):
                    pending[key] = when
            while len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]

    def step(self) -> None:
        """One round: collect, write ``last_seen`` when due, drop idle sessions."""
        self.collect()
        now = self.clock()
        if now - self._last_flush >= self.touch_interval:
            self.flush()
        if self.idle_timeout:
            self._drop_idle(now)

    def flush(self) -> None:
        """Write every pending ``last_seen`` in one batch (kept for the next round
        when the store fails)."""
        self.collect()
        self._last_flush = self.clock()
        with self._lock:
            batch, self.pending = self.pending, {}
        if not batch or self.store is None:
            return
        try:
            self.store.touch_many(sorted(batch.items()))
        except Exception as exc:
            self.failures += 1
            # One warning per outage (with the cause), not one per round.
            log = self._log.warning if self._failing == 0 else self._log.debug
            self._failing += 1
            log(TOUCH_FAILED, sessions=len(batch), cause=cause(exc))
            with self._lock:
                for key, when in batch.items():
                    if when > self.pending.get(key, 0.0):
                        self.pending[key] = when
            return
        self.writes += 1
        self._failing = 0

    def _drop_idle(self, now: float) -> None:
        cache, limit = self.cache, self.idle_timeout
        with self._lock:
            idle = [key for key, last in self.latest.items() if now - last > limit]
            for key in idle:
                del self.latest[key]
            # Forget sessions the cache no longer holds (bounded by the cache).
            if len(self.latest) > 2 * len(cache) + 1024:
                for key in [key for key in self.latest if key not in cache]:
                    del self.latest[key]
        for key in idle:
            cache.invalidate(key)

    def after_fork(self) -> None:
        """In a forked child: the parent's thread and pending writes are not ours."""
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self.pending = {}


_AT_EXIT: weakref.WeakSet[ActivityFlusher] = weakref.WeakSet()
_atexit_registered = False


def _register_atexit(flusher: ActivityFlusher) -> None:
    global _atexit_registered
    _AT_EXIT.add(flusher)
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_flush_all)


def _flush_all() -> None:
    for flusher in list(_AT_EXIT):
        try:
            flusher.stop()
        except Exception:  # noqa: S112 - exiting: nothing left to tell
            continue
