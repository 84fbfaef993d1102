"""What the Redis and PostgreSQL buses share: one subscriber thread per process.

:class:`SubscriberBus` owns the thread's life (``start``, ``stop``, ``after_fork``),
its run loop (connect, catch up, follow; on a lost connection, report it and retry
after an exponential backoff with jitter), the counters behind ``stats()`` and the
reports to the sink (connected, disconnected, gap, events). A bus supplies the
protocol: how to open its subscriber connection (:meth:`SubscriberBus._open`), what
to check and read on connecting (:meth:`SubscriberBus._on_connect`), how to follow
new events (:meth:`SubscriberBus._follow`) and how to wake a blocked read
(:meth:`SubscriberBus._interrupt`).

Log events carry the bus's name under its own key (``stream=`` for Redis,
``table=`` for PostgreSQL); the thread is named ``sessionmw-bus:<name>``.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from sessionmw._log import (
    BUS_BAD_ENTRY,
    BUS_CONNECTED,
    BUS_DISCONNECTED,
    BUS_EVENT_APPLIED,
    BUS_GAP_DETECTED,
    get_logger,
)
from sessionmw.events import Event, describe

if TYPE_CHECKING:
    from sessionmw.bus import BusSink

__all__ = ["SubscriberBus", "default_wait"]


class _Closable(Protocol):
    def close(self) -> None: ...


class _Producers(Protocol):
    """The producers' connections (a Redis client holder, a PostgreSQL pool)."""

    def close(self) -> None: ...

    def after_fork(self) -> None: ...


C = TypeVar("C", bound=_Closable)


def default_wait(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


class _Lag:
    """Revocation lag (now minus the publication time), in milliseconds."""

    def __init__(self, window: int = 1024) -> None:
        self.lock = threading.Lock()
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.last: float | None = None
        self.max: float | None = None

    def add(self, lag_ms: float) -> None:
        with self.lock:
            self.recent.append(lag_ms)
            self.last = lag_ms
            if self.max is None or lag_ms > self.max:
                self.max = lag_ms

    def snapshot(self) -> dict[str, float | None]:
        with self.lock:
            values = sorted(self.recent)
            last, top = self.last, self.max

        def pick(q: float) -> float | None:
            if not values:
                return None
            return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]

        return {"last": last, "max": top, "p50": pick(0.5), "p99": pick(0.99)}


class SubscriberBus(abc.ABC, Generic[C]):
    """A bus whose every process runs one subscriber thread on its own connection
    ``C``; see the module docstring for what a subclass supplies.

    Only the subscriber thread writes the position and the counters; ``stats()``
    and ``connected`` read them from any thread.
    """

    #: Errors that mean the connection is gone: reported, then retried quietly.
    _connection_errors: ClassVar[tuple[type[Exception], ...]] = (OSError,)
    timeout: float

    def __init__(
        self,
        where: tuple[str, str],
        producers: _Producers,
        *,
        backoff_base: float,
        backoff_cap: float,
        wait: Callable[[threading.Event, float], bool],
        rng: Callable[[], float],
    ) -> None:
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._wait = wait
        self._rng = rng
        self._log = get_logger()
        self._label = where
        # Every log event names the bus: stream=... or table=...
        self._where = {where[0]: where[1]}
        self._producers = producers
        # Subscriber state: the thread and what only it writes.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sub_conn: C | None = None
        self._sink: BusSink | None = None
        self._connected = False
        self._reset_counters()

    def __repr__(self) -> str:
        key, value = self._label
        return f"<{type(self).__name__} {key}={value!r} connected={self._connected}>"

    def _reset_counters(self) -> None:
        self._lag = _Lag()
        self._applied = 0
        self._bad_entries = 0
        self._gaps = 0
        self._reconnects = 0
        self._connects = 0

    # -- what a bus supplies -------------------------------------------------------

    def _mark_start(self) -> None:
        """Called by :meth:`start`: note when a process without a position started."""

    @property
    @abc.abstractmethod
    def _block_seconds(self) -> float:
        """The longest the subscriber waits in one read (how late :meth:`stop` may be)."""

    @abc.abstractmethod
    def _open(self) -> C:
        """A new subscriber connection."""

    @abc.abstractmethod
    def _on_connect(self, conn: C) -> None:
        """Check for a gap, catch up, then call :meth:`_now_connected`."""

    @abc.abstractmethod
    def _follow(self, conn: C, stop: threading.Event) -> None:
        """Read and apply new events until ``stop`` is set or the connection fails."""

    @abc.abstractmethod
    def _interrupt(self, conn: C) -> None:
        """Wake a read blocked on ``conn`` (from :meth:`stop`'s thread)."""

    def _orphan(self, conn: C) -> None:
        """In a forked child: what to do with the parent's subscriber connection."""

    @abc.abstractmethod
    def _position(self) -> object:
        """The position shown as ``stats()["cursor"]``."""

    def _more_stats(self) -> dict[str, Any]:
        """Bus-specific entries of ``stats()``."""
        return {}

    @abc.abstractmethod
    def publish(self, events: Sequence[Event]) -> None:
        """Make the events reach every process, whole batch or nothing."""

    # -- Bus protocol --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the subscriber is connected and has read up to the bus's end."""
        return self._connected

    def start(self, sink: BusSink) -> None:
        """Start this process's subscriber thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._sink = sink
            sink.bus_disconnected()  # until the first connect has caught up
            self._mark_start()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop,),
                name=f"sessionmw-bus:{self._label[1]}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the subscriber and close connections (idempotent). The position is
        kept: a later :meth:`start` resumes from it (and checks for a gap)."""
        with self._lock:
            thread, self._thread = self._thread, None
            stop_event = self._stop
        stop_event.set()
        if thread is not None:
            conn = self._sub_conn
            if conn is not None:
                self._interrupt(conn)
            thread.join(self._block_seconds + self.timeout + 1)
        self._connected = False
        if self._sink is not None:
            self._sink.bus_disconnected()
        self._producers.close()

    def after_fork(self) -> None:
        """In a forked child (idempotent): forget the parent's thread, locks and
        connections without closing them. The position is plain data and stays: the
        child's cache is a copy of the parent's as of that position."""
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        if self._sub_conn is not None:
            self._orphan(self._sub_conn)
        self._sub_conn = None
        self._connected = False
        self._producers.after_fork()
        self._reset_counters()

    async def apublish(self, events: Sequence[Event]) -> None:
        """Like ``publish``, in a worker thread so the event loop never blocks."""
        if events:
            await asyncio.to_thread(self.publish, events)

    def stats(self) -> dict[str, Any]:
        """Subscriber health and revocation lag (milliseconds) in this process."""
        return {
            "connected": self._connected,
            "cursor": self._position(),
            "applied": self._applied,
            "bad_entries": self._bad_entries,
            "gaps": self._gaps,
            "connects": self._connects,
            "reconnects": self._reconnects,
            **self._more_stats(),
            "lag_ms": self._lag.snapshot(),
        }

    # -- the subscriber thread -----------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(attempt, 30)))
        return float(ceiling / 2 + self._rng() * ceiling / 2)

    def _run(self, stop: threading.Event) -> None:
        attempt = 0
        while not stop.is_set():
            conn: C | None = None
            try:
                conn = self._open()
                self._sub_conn = conn
                if stop.is_set():
                    break
                self._on_connect(conn)
                attempt = 0
                self._follow(conn, stop)
            except self._connection_errors as exc:
                if stop.is_set():
                    break
                self._lost(exc)
            except Exception as exc:  # the subscriber must outlive bugs
                if stop.is_set():
                    break
                self._log.exception(BUS_DISCONNECTED, problem="subscriber error")
                self._lost(exc)
            finally:
                self._sub_conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection
                        conn.close()
            if stop.is_set():
                break
            self._wait(stop, self._backoff(attempt))
            attempt += 1
        self._connected = False

    def _lost(self, exc: BaseException) -> None:
        was = self._connected
        self._connected = False
        if self._sink is not None:
            self._sink.bus_disconnected()
        if was:
            self._reconnects += 1
            self._log.warning(BUS_DISCONNECTED, **self._where, error=type(exc).__name__)
        else:
            self._log.debug(BUS_DISCONNECTED, **self._where, error=type(exc).__name__)

    def _now_connected(self, **fields: Any) -> None:
        """Caught up after connecting: count it, tell the sink, then show as connected
        (so whoever sees ``connected`` knows the sink has been told)."""
        self._connects += 1
        if self._sink is not None:
            self._sink.bus_connected()
        self._connected = True
        self._log.info(BUS_CONNECTED, **self._where, **fields)

    # -- reports -------------------------------------------------------------------

    def _bad_entry(self, entry: object, problem: str) -> None:
        """An entry that is not a valid event: counted, logged, skipped."""
        self._bad_entries += 1
        self._log.warning(BUS_BAD_ENTRY, **self._where, entry=entry, problem=problem)

    def _deliver(self, event: Event, sent_at: float | None) -> float | None:
        """Hand one event to the sink and record its lag. Returns the lag in
        milliseconds (0.0 without ``sent_at``), or None when the sink raised."""
        try:
            assert self._sink is not None
            self._sink.bus_event(event, sent_at)
        except Exception:  # one bad apply must not stop the bus
            self._log.exception(BUS_BAD_ENTRY, **self._where, problem="apply failed")
            return None
        if sent_at is None:
            return 0.0
        lag = max(0.0, (time.time() - sent_at) * 1000)
        self._lag.add(lag)
        return lag

    def _applied_log(self, applied: Sequence[Event], **fields: Any) -> None:
        if applied:
            self._applied += len(applied)
            self._log.debug(BUS_EVENT_APPLIED, **self._where, events=describe(applied), **fields)

    def _gap(self, reason: str) -> None:
        self._gaps += 1
        self._log.warning(BUS_GAP_DETECTED, **self._where, reason=reason)
        if self._sink is not None:
            self._sink.bus_gap(reason)
