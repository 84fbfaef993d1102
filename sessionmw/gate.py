"""The framework-free core every adapter stands on.

A :class:`Gate` owns one configured cache, backend, bus and hook. Adapters ask it
two things per request: is this request exempt (:meth:`Gate.exempt`), and what does
this header value amount to (:meth:`Gate.check` / :meth:`Gate.acheck`): either the
:class:`~sessionmw.SessionRecord` to hand to the app, or a :class:`Rejection` that
the adapter turns into its framework's response.

All adapters in one process that are configured alike share one gate
(:func:`gate_for`), so they share one cache and one bus subscriber.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

from sessionmw._histogram import BACKEND_LATENCY_BUCKETS, REVOCATION_LAG_BUCKETS, Histogram
from sessionmw._log import BACKEND_UNAVAILABLE, SESSION_REJECTED, get_logger, hash_id
from sessionmw.backends import Backend, backend_from_url
from sessionmw.bus import Bus, bus_from_url
from sessionmw.cache import MISS, MemoryCache
from sessionmw.errors import BackendUnavailable
from sessionmw.events import Event, apply_event
from sessionmw.hook import InvalidationHook
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings

MAX_ID_LENGTH = 256
_VALID_ID = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}").fullmatch
_ACTIVE = SessionStatus.ACTIVE


class Rejection(NamedTuple):
    """An answer the adapter sends instead of calling the app."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    code: str

    @property
    def text(self) -> str:
        return self.body.decode()


def _rejection(status: int, code: str, *extra: tuple[str, str]) -> Rejection:
    body = json.dumps({"error": code}).encode()
    headers = (("content-type", "application/json"), *extra)
    return Rejection(status, body, headers, code)


_CHALLENGE = ("www-authenticate", "DeviceSession")
MISSING = _rejection(401, "missing_session", _CHALLENGE)
#: One answer for unknown, revoked, expired and malformed: the reason is only logged.
INVALID = _rejection(401, "invalid_session", _CHALLENGE)
UNAVAILABLE = _rejection(503, "session_backend_unavailable", ("retry-after", "1"))


class _TimedBackend:
    """The gate's backend, timed into a histogram (only misses reach a backend)."""

    __slots__ = ("_backend", "_histogram")

    def __init__(self, backend: Backend, histogram: Histogram) -> None:
        self._backend = backend
        self._histogram = histogram

    def lookup(self, session_id: str) -> SessionRecord | None:
        start = time.perf_counter()
        try:
            return self._backend.lookup(session_id)
        finally:
            self._histogram.observe(time.perf_counter() - start)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        start = time.perf_counter()
        try:
            return await self._backend.alookup(session_id)
        finally:
            self._histogram.observe(time.perf_counter() - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class Gate:
    """One configured session gate: cache + backend + bus + hook.

    Build it once per process (adapters do so through :func:`gate_for`); it is safe
    to build before a pre-forking server forks, because the bus subscriber starts
    lazily in the worker (:meth:`start`, called on ASGI lifespan start-up or on the
    first request).
    """

    def __init__(self, settings: Settings, *, cache: MemoryCache | None = None) -> None:
        self.settings = settings
        self.backend: Backend = (
            backend_from_url(settings.backend, timeout=settings.backend_timeout)
            if isinstance(settings.backend, str)
            else settings.backend
        )
        #: Seconds per backend call (misses only), read by :mod:`sessionmw.metrics`.
        self.backend_latency = Histogram(BACKEND_LATENCY_BUCKETS)
        #: Seconds from an event's publication to its application here (bus events).
        self.revocation_lag = Histogram(REVOCATION_LAG_BUCKETS)
        #: Invalidation events applied to this process's cache, by type.
        self.events_applied: dict[str, int] = {}
        # Not `cache or ...`: an empty cache is falsy (it has __len__).
        self.cache = (
            cache
            if cache is not None
            else MemoryCache(
                _TimedBackend(self.backend, self.backend_latency),
                max_entries=settings.max_entries,
                ttl=settings.ttl,
                negative_ttl=settings.negative_ttl,
                stale_if_error=settings.stale_if_error,
            )
        )
        self.bus: Bus = bus_from_url(
            settings.bus, stream=settings.stream, outage_ttl=settings.bus_outage_ttl
        )
        self.hook = (
            InvalidationHook(self, settings.invalidation_secret) if settings.hook_enabled else None
        )
        self.hook_path = settings.invalidation_path if self.hook else None
        self.header = settings.header.lower()
        self.exempt_methods = frozenset(settings.exempt_methods)
        self.exempt_prefixes = tuple(settings.exempt_paths)
        self.allowed = 0
        self.rejected: dict[str, int] = {}
        self.started = False
        self._start_lock = threading.Lock()
        self._log = get_logger()
        _after_fork_hooks.add(self)

    # -- per request -------------------------------------------------------------

    def exempt(self, method: str, path: str) -> bool:
        """True when the request skips the session check (exempt method or path)."""
        return method in self.exempt_methods or (
            bool(self.exempt_prefixes) and path.startswith(self.exempt_prefixes)
        )

    def hit(self, value: str | None) -> SessionRecord | None:
        """The fast path: the cached, active, unexpired record for ``value``, else ``None``.

        No format check, no I/O, no logging: the cache only ever holds IDs that passed
        the format check, so a hit proves the ID well-formed. On ``None`` the adapter
        calls :meth:`check` / :meth:`acheck`, which decide everything else.
        """
        if value is None or len(value) > MAX_ID_LENGTH:
            return None
        record = self.cache.peek(value)
        if (
            record.__class__ is SessionRecord
            and record.status is _ACTIVE
            and ((expires_at := record.expires_at) is None or expires_at > time.time())
        ):
            self.allowed += 1
            return record
        return None

    def check(self, value: str | None, *, repeated: bool = False) -> SessionRecord | Rejection:
        """Decide a request from its header value (sync adapters).

        ``value`` is the header's value (``None`` when absent); ``repeated`` is true
        when the header was sent more than once.
        """
        if value is None and not repeated:
            return self._reject(MISSING, "missing")
        if repeated or not _VALID_ID(value):  # type: ignore[arg-type]
            return self._reject(INVALID, "malformed")
        assert value is not None
        record = self.cache.peek(value)
        if record is MISS:
            try:
                record = self.cache.lookup(value)
            except BackendUnavailable:
                return self._unavailable(value)
        return self._verdict(value, record)

    async def acheck(
        self, value: str | None, *, repeated: bool = False
    ) -> SessionRecord | Rejection:
        """Like :meth:`check`, for async adapters: a miss never blocks the loop."""
        if value is None and not repeated:
            return self._reject(MISSING, "missing")
        if repeated or not _VALID_ID(value):  # type: ignore[arg-type]
            return self._reject(INVALID, "malformed")
        assert value is not None
        record = self.cache.peek(value)
        if record is MISS:
            try:
                record = await self.cache.alookup(value)
            except BackendUnavailable:
                return self._unavailable(value)
        return self._verdict(value, record)

    def _verdict(self, session_id: str, record: SessionRecord | None) -> SessionRecord | Rejection:
        if record is None:
            return self._reject(INVALID, "unknown", session_id)
        if record.status is not SessionStatus.ACTIVE:
            return self._reject(INVALID, "revoked", session_id)
        expires_at = record.expires_at
        if expires_at is not None and expires_at <= time.time():
            return self._reject(INVALID, "expired", session_id)
        self.allowed += 1
        return record

    def _reject(
        self, rejection: Rejection, reason: str, session_id: str | None = None
    ) -> Rejection:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if session_id is None:
            self._log.info(SESSION_REJECTED, reason=reason)
        else:
            self._log.info(SESSION_REJECTED, reason=reason, session=hash_id(session_id))
        return rejection

    def _unavailable(self, session_id: str) -> Rejection:
        self.rejected["backend_unavailable"] = self.rejected.get("backend_unavailable", 0) + 1
        self._log.warning(BACKEND_UNAVAILABLE, session=hash_id(session_id))
        return UNAVAILABLE

    # -- invalidation ------------------------------------------------------------

    def apply_event(self, event: Event, *, sent_at: float | None = None) -> None:
        """Apply one event to this process's cache (the bus subscriber calls this).

        ``sent_at`` (wall-clock epoch seconds, e.g. the time part of a Redis Stream
        entry ID) feeds the revocation-lag histogram when the publisher's time is known.
        """
        apply_event(self.cache, event)
        self.events_applied[event.type] = self.events_applied.get(event.type, 0) + 1
        if sent_at is not None:
            self.revocation_lag.observe(time.time() - sent_at)

    def apply_events(self, events: Iterable[Event], *, sent_at: float | None = None) -> None:
        for event in events:
            self.apply_event(event, sent_at=sent_at)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start this process's bus subscriber; idempotent and cheap after the first call."""
        if self.started:
            return
        with self._start_lock:
            if not self.started:
                self.bus.start(self.cache, self.apply_event)
                self.started = True

    def stop(self) -> None:
        """Stop the bus subscriber (ASGI lifespan shutdown, atexit, tests)."""
        with self._start_lock:
            # Always ask the bus: a gate that never started may still hold a producer
            # connection opened by the hook.
            self.bus.stop()
            self.started = False

    async def astop(self) -> None:
        """Like :meth:`stop`, then close the backend's clients (ASGI lifespan shutdown).

        A backend with an ``aclose()`` coroutine method closes the running loop's
        async client there, on the loop that opened it (left to the garbage
        collector, it would warn about an unclosed transport). The built-in backends
        build their clients again on the next use, so a gate shared with other
        adapters keeps working.
        """
        self.stop()
        aclose = getattr(self.backend, "aclose", None)
        if inspect.iscoroutinefunction(aclose):
            await aclose()

    def _after_fork(self) -> None:
        # The child inherits no running threads: start again lazily there.
        self._start_lock = threading.Lock()
        self.started = False
        self.bus.after_fork()
        self.backend_latency._after_fork()
        self.revocation_lag._after_fork()

    def stats(self) -> dict[str, Any]:
        """Cache stats plus request outcomes (for metrics and debugging)."""
        return {
            "cache": self.cache.stats(),
            "allowed": self.allowed,
            "rejected": dict(self.rejected),
            "bus_connected": self.bus.connected,
            "events_applied": dict(self.events_applied),
        }


_after_fork_hooks: weakref.WeakSet[Gate] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for gate in list(_after_fork_hooks):
        gate._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def live_gates() -> list[Gate]:
    """Every gate alive in this process (shared or not), for metrics exporters."""
    return list(_after_fork_hooks)


_registry: dict[Settings, Gate] = {}
_registry_lock = threading.Lock()


def gate_for(settings: Settings) -> Gate:
    """The process-wide gate for these settings (one cache per configured gate)."""
    gate = _registry.get(settings)
    if gate is None:
        with _registry_lock:
            gate = _registry.get(settings)
            if gate is None:
                gate = _registry[settings] = Gate(settings)
    return gate


def forget_gates() -> None:
    """Stop and drop every shared gate (for tests and reloads)."""
    with _registry_lock:
        gates = list(_registry.values())
        _registry.clear()
    for gate in gates:
        gate.stop()
