"""The framework-free core every adapter stands on.

A :class:`Gate` owns one configured cache, backend, bus and hook. Adapters ask it
two things per request: is this request exempt (:meth:`Gate.exempt`), and what does
this header value amount to. The fast answer is :meth:`Gate.hit` (a cached, active,
unexpired session); everything else goes through :meth:`Gate.check` /
:meth:`Gate.acheck`, which return either the :class:`~sessionmw.SessionRecord` to
hand to the app or an :class:`~sessionmw.answers.Answer` to send instead.

The gate is also the bus's sink: it applies the events the bus reads, and owns the
policy around them (re-check cached records while the bus is down, flush on a gap,
the revocation-lag histogram).

All adapters in one process that are configured alike share one gate
(:func:`gate_for`), so they share one cache and one bus subscriber.
"""

from __future__ import annotations

import inspect
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sessionmw import _fork
from sessionmw._histogram import BACKEND_LATENCY_BUCKETS, REVOCATION_LAG_BUCKETS, Histogram
from sessionmw._log import SESSION_REJECTED, get_logger, hash_id
from sessionmw.activity import ActivityFlusher
from sessionmw.answers import INVALID, MISSING, UNAVAILABLE, Answer
from sessionmw.backends import Backend, backend_from_url
from sessionmw.bus import Bus, bus_from_url
from sessionmw.cache import MISS, MemoryCache
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.events import Event, apply_event
from sessionmw.hook import InvalidationHook
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings

if TYPE_CHECKING:
    from sessionmw.idp import Receiver

__all__ = [
    "INVALID",
    "MAX_ID_LENGTH",
    "MISSING",
    "UNAVAILABLE",
    "Gate",
    "exempt_matcher",
    "forget_gates",
    "gate_for",
    "live_gates",
]

MAX_ID_LENGTH = 256
_VALID_ID = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}").fullmatch
_ACTIVE = SessionStatus.ACTIVE


def exempt_matcher(prefixes: Iterable[str]) -> Callable[[str], bool] | None:
    """A test for ``exempt_paths``, matched at segment boundaries (``None``: no paths).

    ``/healthz`` exempts ``/healthz`` and ``/healthz/...``, not ``/healthzz``; a prefix
    ending in ``/`` exempts everything below it.

    >>> match = exempt_matcher(["/healthz", "/static/"])
    >>> [match(p) for p in ("/healthz", "/healthz/db", "/healthzz", "/static/a.css", "/static")]
    [True, True, False, True, False]
    """
    exact: set[str] = set()
    below: list[str] = []
    for prefix in prefixes:
        if prefix.endswith("/"):
            below.append(prefix)
        else:
            exact.add(prefix)
            below.append(prefix + "/")
    if not below:
        return None
    starts = tuple(below)
    frozen = frozenset(exact)

    def match(path: str) -> bool:
        return path in frozen or path.startswith(starts)

    return match


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
        #: Invalidation events received, by source (``hook``, ``bus``, ``oidc``, ``ssf``).
        self.events_received: dict[str, int] = {}
        # Events arrive on several threads (hook requests, the bus subscriber): the two
        # counters above change under this lock. Never taken on the request path.
        self._events_lock = threading.Lock()
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
            settings.bus,
            stream=settings.stream,
            timeout=settings.backend_timeout,
            retention=settings.bus_retention,
        )
        self.hook = (
            InvalidationHook(
                settings.invalidation_secret,
                public_keys=settings.invalidation_public_key,
                apply=self.apply_events,
                bus=self.bus,
            )
            if settings.hook_enabled
            else None
        )
        # Identity-provider routes (SPEC section 14): built only when configured, so
        # joserfc and httpx are imported only then.
        self.oidc: Receiver | None = None
        self.ssf: Receiver | None = None
        if settings.oidc_issuer or settings.ssf_issuer:
            from sessionmw import idp

            self.oidc, self.ssf = idp.build(
                settings, store=self.backend, apply=self.apply_events, bus=self.bus
            )
        self._hook_path = settings.invalidation_path if self.hook else None
        #: The internal POST routes (hook, back-channel logout, SSF) by path; ``None``
        #: when there are none, so the request path pays one ``is None`` test.
        self.routes: dict[str, Receiver] | None = None
        self._route()
        # Activity (SPEC section 11): recorded per request when there is a store to
        # write last_seen to, or an idle timeout to enforce.
        writable = callable(getattr(self.backend, "touch_many", None))
        if settings.idle_timeout and not writable:
            raise ConfigError(
                "idle_timeout",
                "needs a store sessionmw writes last_seen to (memory, SQL, Redis); an "
                "auth service (http) must enforce idleness itself",
            )
        self.activity = (
            ActivityFlusher(
                self.cache,
                self.backend,
                touch_interval=settings.touch_interval,
                idle_timeout=settings.idle_timeout,
            )
            if writable or settings.idle_timeout
            else None
        )
        self.header = settings.header.lower()
        self.exempt_methods = frozenset(settings.exempt_methods)
        self.exempt_path = exempt_matcher(settings.exempt_paths)
        self._allowed = 0
        self.rejected: dict[str, int] = {}
        self.started = False
        self._start_lock = threading.Lock()
        self._log = get_logger()
        _GATES.add(self)
        _fork.register(self)

    def __repr__(self) -> str:
        return f"<Gate backend={self.backend!r} bus={self.bus!r} cache={self.cache!r}>"

    @property
    def hook_path(self) -> str | None:
        """Where this gate's hook is served (``None``: no hook). ``invalidation_route``
        may move it; the middlewares read :attr:`routes` per request."""
        return self._hook_path

    @hook_path.setter
    def hook_path(self, path: str | None) -> None:
        self._hook_path = path
        self._route()

    def _route(self) -> None:
        routes: dict[str, Receiver] = {}
        if self.hook is not None and self._hook_path is not None:
            routes[self._hook_path] = self.hook
        for key, receiver in (("oidc_logout_path", self.oidc), ("ssf_path", self.ssf)):
            if receiver is not None:
                path = getattr(self.settings, key)
                if path in routes:
                    raise ConfigError(key, f"{path!r} is already served by another route")
                routes[path] = receiver
        self.routes = routes or None

    # -- per request -------------------------------------------------------------

    @property
    def allowed(self) -> int:
        """Requests let through (fast hits plus full checks)."""
        return self._allowed + self.cache.allowed_hits

    def exempt(self, method: str, path: str) -> bool:
        """True when the request skips the session check (exempt method or path)."""
        return method in self.exempt_methods or (
            self.exempt_path is not None and self.exempt_path(path)
        )

    def hit(self, value: str | None) -> SessionRecord | None:
        """The fast path: the cached, active, unexpired record for ``value``, else ``None``.

        No format check, no I/O, no logging: the cache only ever holds IDs that passed
        the format check, so a hit proves the ID well-formed. On ``None`` the adapter
        calls :meth:`check` / :meth:`acheck`, which decide everything else.
        """
        return None if value is None else self.cache.hit(value)

    def check(self, value: str | None, *, repeated: bool = False) -> SessionRecord | Answer:
        """Decide a request from its header value (sync adapters).

        ``value`` is the header's value (``None`` when absent); ``repeated`` is true
        when the header was sent more than once.
        """
        if value is None and not repeated:
            return self.reject(MISSING, "missing")
        if repeated or not _VALID_ID(value):  # type: ignore[arg-type]
            return self.reject(INVALID, "malformed")
        assert value is not None
        record = self.cache.peek(value)
        fetched = record is MISS
        try:
            if record is MISS:
                record = self.cache.lookup(value)
            outcome = self._verdict(value, record)
            if not isinstance(outcome, Answer) and self._idle(value):
                if not fetched:  # what the store says now, before refusing
                    self.cache.invalidate(value)
                    outcome = self._verdict(value, self.cache.lookup(value))
                if not isinstance(outcome, Answer) and self._idle(value):
                    return self._refuse_idle(value)
        except BackendUnavailable:
            return self._unavailable()
        return self._allow(value, outcome)

    async def acheck(self, value: str | None, *, repeated: bool = False) -> SessionRecord | Answer:
        """Like :meth:`check`, for async adapters: a miss never blocks the loop."""
        if value is None and not repeated:
            return self.reject(MISSING, "missing")
        if repeated or not _VALID_ID(value):  # type: ignore[arg-type]
            return self.reject(INVALID, "malformed")
        assert value is not None
        record = self.cache.peek(value)
        fetched = record is MISS
        try:
            if record is MISS:
                record = await self.cache.alookup(value)
            outcome = self._verdict(value, record)
            if not isinstance(outcome, Answer) and self._idle(value):
                if not fetched:  # what the store says now, before refusing
                    self.cache.invalidate(value)
                    outcome = self._verdict(value, await self.cache.alookup(value))
                if not isinstance(outcome, Answer) and self._idle(value):
                    return self._refuse_idle(value)
        except BackendUnavailable:
            return self._unavailable()
        return self._allow(value, outcome)

    def _idle(self, session_id: str) -> bool:
        return self.activity is not None and self.activity.idle(session_id)

    def _refuse_idle(self, session_id: str) -> Answer:
        # Idle is final, like expiry: refused here from now on without asking again.
        self.cache.mark_revoked(session_id)
        return self.reject(INVALID, "idle", session_id)

    def _allow(self, session_id: str, outcome: SessionRecord | Answer) -> SessionRecord | Answer:
        if isinstance(outcome, Answer):
            return outcome
        self._allowed += 1
        if self.activity is not None:
            self.cache.touch(session_id)
        return outcome

    def _verdict(self, session_id: str, record: SessionRecord | None) -> SessionRecord | Answer:
        if record is None:
            return self.reject(INVALID, "unknown", session_id)
        if record.status is not SessionStatus.ACTIVE:
            return self.reject(INVALID, "revoked", session_id)
        expires_at = record.expires_at
        if expires_at is not None and expires_at <= time.time():
            return self.reject(INVALID, "expired", session_id)
        return record

    def reject(self, answer: Answer, reason: str, session_id: str | None = None) -> Answer:
        """Count and log a refusal (``reason`` only in the log), and return ``answer``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if session_id is None:
            self._log.info(SESSION_REJECTED, reason=reason)
        else:
            self._log.info(SESSION_REJECTED, reason=reason, session=hash_id(session_id))
        return answer

    def _unavailable(self) -> Answer:
        # Counted here; logged once, with its cause, by the cache that saw it fail.
        self.rejected["backend_unavailable"] = self.rejected.get("backend_unavailable", 0) + 1
        return UNAVAILABLE

    # -- invalidation ------------------------------------------------------------

    def apply_event(self, event: Event) -> None:
        """Apply one event to this process's cache."""
        apply_event(self.cache, event)
        with self._events_lock:
            self.events_applied[event.type] = self.events_applied.get(event.type, 0) + 1

    def apply_events(self, events: Sequence[Event], *, source: str = "hook") -> None:
        """Apply a batch to this process's cache (the hook and ``Sessions`` call this).

        ``source`` names where the batch came from, for the metrics: ``hook`` (the
        signed hook), ``oidc`` (back-channel logout), ``ssf`` (security event tokens).
        Events read from the bus come through :meth:`bus_event` (source ``bus``).
        """
        self._received(source, len(events))
        for event in events:
            self.apply_event(event)

    def _received(self, source: str, count: int) -> None:
        with self._events_lock:
            self.events_received[source] = self.events_received.get(source, 0) + count

    # -- the bus's sink ------------------------------------------------------------

    def bus_event(self, event: Event, sent_at: float | None) -> None:
        """An event read from the bus (``sent_at``: the publisher's wall clock)."""
        self._received("bus", 1)
        self.apply_event(event)
        if sent_at is not None:
            self.revocation_lag.observe(max(0.0, time.time() - sent_at))

    def bus_connected(self) -> None:
        self.cache.set_max_age(None)

    def bus_disconnected(self) -> None:
        # Events may be missed: cached records older than this are re-checked.
        self.cache.set_max_age(self.settings.bus_outage_ttl)

    def bus_gap(self, reason: str) -> None:
        # Events this process never saw are gone: nothing cached can be trusted.
        # (The bus has logged bus.gap_detected with its reason.)
        self.cache.clear()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start this process's bus subscriber; idempotent and cheap after the first call."""
        if self.started:
            return
        with self._start_lock:
            if not self.started:
                self.bus.start(self)
                if self.activity is not None:
                    self.activity.start()
                self.started = True

    def stop(self) -> None:
        """Stop the bus subscriber (ASGI lifespan shutdown, atexit, tests)."""
        with self._start_lock:
            # Always ask the bus: a gate that never started may still hold a producer
            # connection opened by the hook.
            self.bus.stop()
            if self.activity is not None:
                self.activity.stop()  # writes what is pending: shutdown must not lose it
            self.started = False
        for callback in list(_STOP_CALLBACKS):
            try:
                callback(self)
            except Exception:  # an observer must not break a shutdown
                self._log.exception("gate.stop_callback_failed")

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

    def _reset_after_fork(self) -> None:
        # The child inherits no running threads: start again lazily there.
        self._start_lock = threading.Lock()
        self._events_lock = threading.Lock()
        self.started = False
        self.bus.after_fork()
        if self.activity is not None:
            self.activity.after_fork()
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
            "events_received": dict(self.events_received),
        }


_GATES: weakref.WeakSet[Gate] = weakref.WeakSet()
_STOP_CALLBACKS: list[Callable[[Gate], None]] = []


def on_stop(callback: Callable[[Gate], None]) -> None:
    """Call ``callback(gate)`` at the end of every :meth:`Gate.stop`. The metrics
    exporter writes its last numbers there: a server may end a worker right after
    the ASGI lifespan shutdown without running ``atexit`` (uvicorn re-raises SIGTERM)."""
    _STOP_CALLBACKS.append(callback)


def live_gates() -> list[Gate]:
    """Every gate alive in this process (shared or not), for metrics exporters."""
    return list(_GATES)


class _Registry:
    """The process-wide gates, one per distinct settings."""

    def __init__(self) -> None:
        self.gates: dict[Settings, Gate] = {}
        self.lock = threading.Lock()
        _fork.register(self)

    def _reset_after_fork(self) -> None:
        self.lock = threading.Lock()


_registry = _Registry()


def gate_for(settings: Settings) -> Gate:
    """The process-wide gate for these settings (one cache per configured gate)."""
    gate = _registry.gates.get(settings)
    if gate is None:
        with _registry.lock:
            gate = _registry.gates.get(settings)
            if gate is None:
                gate = _registry.gates[settings] = Gate(settings)
    return gate


def forget_gates() -> None:
    """Stop and drop every shared gate (for tests and reloads)."""
    with _registry.lock:
        gates = list(_registry.gates.values())
        _registry.gates.clear()
    for gate in gates:
        gate.stop()
