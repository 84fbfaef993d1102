"""The process-local session cache (SPEC section 5).

:class:`MemoryCache` sits between a middleware and a session store. Every request
asks it for a device session; it answers from memory when it can and falls back to
the backend on a miss, storing what the backend says (known *and* unknown IDs).
Revocations pushed through the invalidation hook or bus flip cached records to
revoked in place, so a revoked session is refused without a backend round trip; the
TTL is only a safety net for missed events.

Example::

    from sessionmw.backends import MemoryBackend
    from sessionmw.cache import MISS, MemoryCache

    cache = MemoryCache(MemoryBackend(), max_entries=50_000, ttl=600)
    record = cache.lookup("abc")          # None: unknown session
    cache.mark_revoked("abc")             # remembered even though not cached
    hit = cache.peek("abc")               # record, None (known unknown) or MISS

Design, in short:

* **Hot path.** Entries live in a plain ``dict`` of small ``__slots__`` objects.
  :meth:`MemoryCache.peek` reads it without the lock: a ``dict.get`` is atomic under
  the GIL, and writers replace an entry's fields in an order that keeps every
  interleaving safe (see :class:`_Entry`). A hit costs one ``dict.get``, one clock
  read, a comparison, a flag store and a counter increment.
* **Approximate LRU (CLOCK / second chance).** A hit only sets the entry's
  ``ref`` flag. When the cache is full, eviction walks a queue of entries in
  insertion order, gives each referenced entry one more round (flag cleared,
  re-queued) and evicts the first unreferenced one. New entries start unreferenced,
  so a flood of one-off IDs evicts itself before it displaces the working set.
* **Single flight.** Concurrent misses of one ID share one backend call through a
  ``concurrent.futures.Future`` per flight: threads block on it, asyncio tasks (of
  any loop, in any thread) await it through :func:`asyncio.wrap_future`.
* **Revocations win.** Every fetched record is checked, under the lock, against the
  tombstones (revoked IDs) and user watermarks remembered for ``ttl`` seconds, and
  against user revocations that arrived while the fetch was in flight. ``clear()``
  bumps a generation counter: a fetch started before it is never stored.
* **No I/O under the lock**, and nothing logged under it either.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal, Protocol, TypeVar

from sessionmw import _fork
from sessionmw._log import BACKEND_UNAVAILABLE, CACHE_STALE_SERVED, cause, get_logger, hash_id
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import SessionRecord, SessionStatus, plain

__all__ = ["MISS", "LookupBackend", "MemoryCache", "Miss"]

_T = TypeVar("_T")
_SLOW_COUNTERS = (
    "misses",
    "coalesced",
    "evictions",
    "expirations",
    "revocations",
    "backend_errors",
    "stale_served",
)
_ACTIVE: Final = SessionStatus.ACTIVE
_REVOKED: Final = SessionStatus.REVOKED

#: A user index value holds the session IDs of one user: a bare ``str`` for the common
#: single-session user (no container at all), a small tuple up to this many sessions,
#: a set beyond (so adding and removing stay cheap for users with many devices).
_TUPLE_MAX: Final = 8


class _Miss(enum.Enum):
    MISS = "MISS"

    def __repr__(self) -> str:
        return "MISS"


#: What :meth:`MemoryCache.peek` returns when it cannot answer from memory.
MISS: Final = _Miss.MISS
#: The type of :data:`MISS`, for annotations.
Miss = Literal[_Miss.MISS]


class LookupBackend(Protocol):
    """What the cache needs from a session store (see :mod:`sessionmw.backends`)."""

    def lookup(self, session_id: str) -> SessionRecord | None: ...

    async def alookup(self, session_id: str) -> SessionRecord | None: ...


class _Entry:
    """One cached answer: a record, or ``None`` for "unknown to the backend".

    Lock-free readers load ``fetched`` *before* ``record``, and writers updating an
    entry in place store ``record`` *before* ``fetched``. So a reader that sees the
    new fetch time also sees the new record, and a reader that sees the old fetch
    time judges the entry older than it is (at worst a needless miss). The
    freshness window is derived from ``fetched`` and the cache's current TTLs
    rather than stored per entry: it keeps the entry small and lets
    :meth:`MemoryCache.set_max_age` shorten every window at once.
    """

    __slots__ = ("fetched", "key", "record", "ref")

    def __init__(self, key: str, record: SessionRecord | None, fetched: float) -> None:
        self.key = key
        self.record = record
        self.fetched = fetched
        #: The CLOCK mark: False (not used since the last sweep), True (used), or the
        #: cache-clock time of the latest tracked request (used, not yet reported).
        self.ref: bool | float = False


class _Retry(enum.Enum):
    RETRY = "RETRY"


#: A flight's result telling its waiters to start over: its leader was cancelled
#: (``KeyboardInterrupt``, task cancellation), which says nothing about the backend.
_RETRY: Final = _Retry.RETRY

_FlightResult = SessionRecord | None | Literal[_Retry.RETRY]


class _Flight:
    """A backend fetch in progress for one ID, shared by every caller that missed it."""

    __slots__ = ("future", "gen", "user_seq")

    def __init__(self, gen: int, user_seq: int) -> None:
        # Created by the first waiter only (under the cache lock): most misses are
        # not contended, and a Future costs more than the rest of a miss.
        self.future: concurrent.futures.Future[_FlightResult] | None = None
        self.gen = gen  # MemoryCache._gen when the fetch started (clear() detection)
        self.user_seq = user_seq  # MemoryCache._user_seq when it started

    def join(self) -> concurrent.futures.Future[_FlightResult]:
        """The future a waiter blocks on or awaits. Call under the cache lock."""
        future = self.future
        if future is None:
            future = self.future = concurrent.futures.Future()
            # A RUNNING future cannot be cancelled: an asyncio waiter cancelled while
            # awaiting ``wrap_future(future)`` must not cancel it for everyone else.
            future.set_running_or_notify_cancel()
        return future

    def settle(self, result: _FlightResult | BackendUnavailable) -> None:
        """Hand the outcome to the waiters, if any.

        Call once the flight is out of the cache's table (under the lock), so no
        waiter can join after ``future`` is read.
        """
        future = self.future
        if future is None:
            return
        if isinstance(result, BackendUnavailable):
            future.set_exception(result)
        else:
            future.set_result(result)


UserIndexValue = str | tuple[str, ...] | set[str]


class MemoryCache:
    """LRU + TTL cache of device sessions in front of a backend (SPEC section 5).

    ``backend``: an object with ``lookup(id)`` and ``async alookup(id)`` returning a
    :class:`~sessionmw.SessionRecord` or ``None`` and raising
    :class:`~sessionmw.BackendUnavailable`; any other exception it raises is treated
    as ``BackendUnavailable`` too. ``max_entries`` bounds everything cached, known
    and unknown IDs alike. ``ttl``: seconds a record is served before a fresh
    backend lookup. ``negative_ttl``: seconds an "unknown" answer is served (0: not
    cached). ``stale_if_error``: seconds past its TTL an *active* record may still be
    served while the backend fails (0: fail closed). ``clock`` is monotonic and
    drives every TTL; ``wall_clock`` is compared with records' ``issued_at`` only.

    >>> from sessionmw.backends import MemoryBackend
    >>> from sessionmw.records import SessionRecord, SessionStatus, plain
    >>> backend = MemoryBackend([SessionRecord("s1", "u1", SessionStatus.ACTIVE)])
    >>> cache = MemoryCache(backend, max_entries=1000)
    >>> cache.lookup("s1").status
    <SessionStatus.ACTIVE: 'active'>
    >>> cache.mark_user_revoked("u1")
    >>> cache.peek("s1").status
    <SessionStatus.REVOKED: 'revoked'>

    Semantics worth knowing:

    * Callers get the record with status ``REVOKED`` for a revoked session and must
      check ``expires_at`` themselves.
    * :meth:`peek` counts hits; misses are counted by :meth:`lookup` /
      :meth:`alookup` (once per call that had to wait for the backend).
    * Expired entries stay in place (counted by ``len``) until refreshed or evicted:
      they are what ``stale_if_error`` serves when the backend fails.
    * Tombstones (:meth:`mark_revoked`) and watermarks (:meth:`mark_user_revoked`)
      survive :meth:`clear` and :meth:`invalidate`: a flush forces a re-fetch, and a
      lagging replica must not resurrect a session revoked moments before.
    * Do not call the blocking :meth:`lookup` from an event loop's thread; use
      :meth:`alookup` there.
    """

    def __init__(
        self,
        backend: LookupBackend,
        *,
        max_entries: int = 50000,
        ttl: float = 600,
        negative_ttl: float = 5,
        stale_if_error: float = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError("max_entries", f"must be a whole number >= 1, got {max_entries!r}")
        for key, value in (
            ("ttl", ttl),
            ("negative_ttl", negative_ttl),
            ("stale_if_error", stale_if_error),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(key, f"must be a number >= 0, got {value!r}")
        self._backend = backend
        self._max_entries = max_entries
        self._ttl = float(ttl)
        self._negative_ttl = float(negative_ttl)
        self._stale_if_error = float(stale_if_error)
        self._clock = clock
        self._wall_clock = wall_clock
        # Freshness windows read by the hot path: the TTLs, capped by set_max_age().
        self._max_age: float | None = None
        self._pos_fresh = self._ttl
        self._neg_fresh = self._negative_ttl
        # Wall clock minus cache clock, re-read on every store: lets the hot path judge
        # ``expires_at`` (wall clock) from its one cache-clock read (see hit()).
        self._wall_offset = wall_clock() - clock()
        # Activity of entries that left the CLOCK's second chance before the flusher
        # read it: session ID -> cache-clock time (see take_activity()).
        self._unreported: dict[str, float] = {}
        self._fetch_observer: Callable[[str, float], None] | None = None
        #: Whether hit() records requests (set by the gate when activity is tracked).
        self.track_activity = False

        self._lock = threading.Lock()
        self._data: dict[str, _Entry] = {}
        # CLOCK queue, oldest insertion first. Entries dropped by invalidate() stay
        # here ("dead") until eviction reaches them or a compaction drops them.
        self._order: collections.deque[_Entry] = collections.deque()
        self._dead = 0
        self._users: dict[str, UserIndexValue] = {}
        self._flights: dict[str, _Flight] = {}
        self._gen = 0
        self._user_seq = 0
        # session_id -> monotonic deadline; user_id -> (before, deadline, user_seq).
        self._tombstones: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._watermarks: collections.OrderedDict[str, tuple[float, float, int]] = (
            collections.OrderedDict()
        )

        # Hit counters are bumped without the lock (a lost increment under thread
        # contention is acceptable); the others change under the lock only.
        self._hits = 0
        self._allowed_hits = 0
        self._negative_hits = 0
        # The slow-path counters, in one dict: the instance keeps under 30 attributes,
        # so CPython's specialised attribute access stays on the hit path.
        self._counts = dict.fromkeys(_SLOW_COUNTERS, 0)
        _fork.register(self)

    # ------------------------------------------------------------------ hot path

    def hit(self, session_id: str) -> SessionRecord | None:
        """The cached record for ``session_id`` if it is fresh, active and unexpired,
        recording the request's time for the activity flusher when ``track_activity``
        is on (in the entry's CLOCK mark, which a hit writes anyway).

        The middlewares' fast path: one dict lookup, one clock read, no lock, no
        I/O. Anything else (a miss, an unknown, revoked or expired session, a stale
        entry) answers ``None`` and the caller takes the full path (:meth:`peek`,
        :meth:`lookup`). ``expires_at`` is judged against the cache clock plus the
        wall-clock offset measured at the last store, so a wall-clock step shows
        here only after the next backend fetch (the full path reads the wall clock).
        """
        entry = self._data.get(session_id)
        if entry is not None:
            now = self._clock()
            # ``fetched`` before ``record``: see _Entry.
            if now - entry.fetched < self._pos_fresh:
                record = entry.record
                if (
                    record is not None
                    and record.status is _ACTIVE
                    and (
                        (expires := record.expires_at) is None or expires > now + self._wall_offset
                    )
                ):
                    # The time of the request when activity is tracked: the flusher
                    # reads it back (take_activity); any truthy ref is "in use".
                    entry.ref = now if self.track_activity else True
                    self._allowed_hits += 1
                    return record
        return None

    def touch(self, session_id: str) -> None:
        """Record a request of ``session_id`` now (allowed by the full path)."""
        entry = self._data.get(session_id)
        if entry is not None:
            entry.ref = self._clock()

    def take_activity(self) -> dict[str, float]:
        """The sessions with requests since the last call, each with the wall-clock
        time of its latest request.

        A tracked hit stores its clock reading in the entry's ``ref`` slot (which
        the hit writes anyway for the CLOCK eviction), so recording costs nothing
        extra; this walks the entries (a copy of the table: no lock held) and turns
        each reading back into a plain reference mark. A request landing while an
        entry is read may be missed: the session's next request records it again.
        """
        offset = self._wall_offset
        taken: dict[str, float] = {}
        for entry in list(self._data.values()):
            when = entry.ref
            if when is not True and when is not False:  # a tracked request's time
                entry.ref = True  # reported: a plain "in use" mark again
                taken[entry.key] = when + offset
        if self._unreported:
            with self._lock:
                unreported, self._unreported = self._unreported, {}
            for key, when in unreported.items():
                if when + offset > taken.get(key, 0.0):
                    taken[key] = when + offset
        return taken

    def set_fetch_observer(self, observer: Callable[[str, float], None] | None) -> None:
        """Call ``observer(session_id, last_seen)`` for every fetched record whose store
        knows its ``last_seen`` (wall clock)."""
        self._fetch_observer = observer

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._data

    @property
    def allowed_hits(self) -> int:
        """How many :meth:`hit` calls returned a record."""
        return self._allowed_hits

    def peek(self, session_id: str) -> SessionRecord | Miss | None:
        """The cached answer for ``session_id`` if fresh, without touching the backend.

        Returns the record (possibly revoked), ``None`` for a fresh "unknown" entry,
        or :data:`MISS` when nothing fresh is cached. Lock-free: this is what a
        middleware calls on every request before falling back to :meth:`alookup`.
        """
        entry = self._data.get(session_id)
        if entry is not None:
            # ``fetched`` before ``record``: see _Entry.
            age = self._clock() - entry.fetched
            record = entry.record
            if record is not None:
                if age < self._pos_fresh:
                    if entry.ref is False:  # keep a tracked request's time
                        entry.ref = True
                    self._hits += 1
                    return record
            elif age < self._neg_fresh:
                if entry.ref is False:  # keep a tracked request's time
                    entry.ref = True
                self._negative_hits += 1
                return None
        return MISS

    def lookup(self, session_id: str) -> SessionRecord | None:
        """The record for ``session_id`` (``None``: unknown), from memory or the backend.

        Blocking: calls ``backend.lookup`` on a miss, once for all concurrent callers.
        Raises :class:`~sessionmw.BackendUnavailable` when the backend fails and no
        stale record may be served.
        """
        # peek(), inlined: this is the hot path of the sync adapters.
        entry = self._data.get(session_id)
        if entry is not None:
            age = self._clock() - entry.fetched
            record = entry.record
            if record is not None:
                if age < self._pos_fresh:
                    if entry.ref is False:  # keep a tracked request's time
                        entry.ref = True
                    self._hits += 1
                    return record
            elif age < self._neg_fresh:
                if entry.ref is False:  # keep a tracked request's time
                    entry.ref = True
                self._negative_hits += 1
                return None
        if not session_id:
            return None
        counted = False
        while True:
            answer, flight, future = self._join(session_id, counted)
            counted = True
            if flight is not None:
                return self._lead_sync(session_id, flight)
            if future is None:
                return answer
            try:
                result = future.result()
            except BackendUnavailable as exc:
                return self._fallback(session_id, exc, waiter=True)
            if result is not _RETRY:
                return result

    async def alookup(self, session_id: str) -> SessionRecord | None:
        """Async :meth:`lookup`: awaits ``backend.alookup``; never blocks the event loop.

        Coalesces with concurrent :meth:`lookup` / :meth:`alookup` calls for the same
        ID, whichever thread or event loop they run in.
        """
        entry = self._data.get(session_id)
        if entry is not None:
            age = self._clock() - entry.fetched
            record = entry.record
            if record is not None:
                if age < self._pos_fresh:
                    if entry.ref is False:  # keep a tracked request's time
                        entry.ref = True
                    self._hits += 1
                    return record
            elif age < self._neg_fresh:
                if entry.ref is False:  # keep a tracked request's time
                    entry.ref = True
                self._negative_hits += 1
                return None
        if not session_id:
            return None
        counted = False
        while True:
            answer, flight, future = self._join(session_id, counted)
            counted = True
            if flight is not None:
                return await self._lead_async(session_id, flight)
            if future is None:
                return answer
            try:
                result = await asyncio.wrap_future(future)
            except BackendUnavailable as exc:
                return self._fallback(session_id, exc, waiter=True)
            if result is not _RETRY:
                return result

    # ------------------------------------------------------------------ misses

    def _join(
        self, session_id: str, counted: bool
    ) -> tuple[
        SessionRecord | None, _Flight | None, concurrent.futures.Future[_FlightResult] | None
    ]:
        """Under the lock: answer from memory, join the flight in progress, or lead one.

        Returns ``(answer, None, None)`` when memory answers after all (another
        caller stored it since our lock-free read), ``(None, None, future)`` to wait
        for a flight in progress, or ``(None, flight, None)`` to lead a new one.
        """
        with self._lock:
            # Stored by another caller since our lock-free read? (Skipped for an ID
            # with no entry at all, the common case of a flood of unknown IDs.)
            if session_id in self._data:
                answer = self.peek(session_id)
                if answer is not MISS:
                    return answer, None, None
            if not counted:
                self._counts["misses"] += 1
            flight = self._flights.get(session_id)
            if flight is not None:
                self._counts["coalesced"] += 1
                return None, None, flight.join()
            entry = self._data.get(session_id)
            if entry is not None:
                ttl = self._ttl if entry.record is not None else self._negative_ttl
                if self._clock() - entry.fetched >= ttl:
                    self._counts["expirations"] += 1
            flight = _Flight(self._gen, self._user_seq)
            self._flights[session_id] = flight
            return None, flight, None

    def _lead_sync(self, session_id: str, flight: _Flight) -> SessionRecord | None:
        try:
            record = self._backend.lookup(session_id)
        except Exception as exc:
            return self._fallback(session_id, self._fail(session_id, flight, exc), waiter=False)
        except BaseException:
            self._abandon(session_id, flight)
            raise
        return self._complete(session_id, flight, record)

    async def _lead_async(self, session_id: str, flight: _Flight) -> SessionRecord | None:
        try:
            record = await self._backend.alookup(session_id)
        except Exception as exc:
            return self._fallback(session_id, self._fail(session_id, flight, exc), waiter=False)
        except BaseException:  # task cancelled: the waiters start over
            self._abandon(session_id, flight)
            raise
        return self._complete(session_id, flight, record)

    def _complete(self, session_id: str, flight: _Flight, record: object) -> SessionRecord | None:
        """Store a fetched answer (revocations applied) and hand it to the waiters."""
        if record is not None and not isinstance(record, SessionRecord):
            exc = TypeError(f"backend returned {type(record).__name__}, not a SessionRecord")
            return self._fallback(session_id, self._fail(session_id, flight, exc), waiter=False)
        if record is not None and record.__class__ is not SessionRecord:
            # A store's richer record (StoredSession): the cache keeps the plain one,
            # and hands what the store knows of activity to the observer.
            last_seen = getattr(record, "last_seen", None)
            observe = self._fetch_observer
            if observe is not None and last_seen is not None:
                observe(session_id, last_seen)
            record = plain(record)
        with self._lock:
            if self._flights.get(session_id) is flight:
                del self._flights[session_id]
            if (
                record is not None
                and record.status is _ACTIVE
                and self._revoked_meanwhile(session_id, record, flight.user_seq)
            ):
                record = dataclasses.replace(record, status=_REVOKED)
                self._counts["revocations"] += 1
            if flight.gen == self._gen:
                record = self._store(session_id, record)
        flight.settle(record)
        return record

    def _fail(self, session_id: str, flight: _Flight, exc: Exception) -> BackendUnavailable:
        """Record a failed fetch and fail every waiter with ``BackendUnavailable``."""
        error = (
            exc
            if isinstance(exc, BackendUnavailable)
            # The original message could quote the ID: keep only the type.
            else BackendUnavailable(f"session backend failed: {type(exc).__name__}")
        )
        with self._lock:
            if self._flights.get(session_id) is flight:
                del self._flights[session_id]
            self._counts["backend_errors"] += 1
        flight.settle(error)
        # The one log line of this failure (waiters and the gate do not log it again).
        get_logger().warning(
            BACKEND_UNAVAILABLE, session=hash_id(session_id), cause=cause(exc, session_id)
        )
        return error

    def _abandon(self, session_id: str, flight: _Flight) -> None:
        with self._lock:
            if self._flights.get(session_id) is flight:
                del self._flights[session_id]
        flight.settle(_RETRY)

    def _fallback(
        self, session_id: str, error: BackendUnavailable, *, waiter: bool
    ) -> SessionRecord | None:
        """``stale_if_error``: an active record expired by at most that much, or raise."""
        if self._stale_if_error > 0:
            with self._lock:
                entry = self._data.get(session_id)
                record = entry.record if entry is not None else None
                if (
                    entry is not None
                    and record is not None
                    and record.status is _ACTIVE
                    and self._clock() - entry.fetched < self._ttl + self._stale_if_error
                ):
                    self._counts["stale_served"] += 1
                else:
                    record = None
            if record is not None:
                get_logger().debug(CACHE_STALE_SERVED, session=hash_id(session_id))
                return record
        if waiter:
            # Each waiter raises its own exception: one instance raised in many
            # threads would have its traceback rewritten concurrently.
            raise BackendUnavailable(str(error)) from error
        raise error

    # ------------------------------------------------------------------ under the lock

    def _revoked_meanwhile(self, session_id: str, record: SessionRecord, user_seq: int) -> bool:
        now = self._clock()
        deadline = self._tombstones.get(session_id)
        if deadline is not None:
            if deadline > now:
                return True
            del self._tombstones[session_id]
        mark = self._watermarks.get(record.user_id)
        if mark is not None:
            before, deadline, seq = mark
            if deadline <= now:
                del self._watermarks[record.user_id]
            elif record.issued_at is not None:
                return record.issued_at <= before
            else:
                # Unknown issue time: only a revocation that arrived while this fetch
                # was in flight can be applied (SPEC compares known times only).
                return seq > user_seq
        return False

    def _store(self, session_id: str, record: SessionRecord | None) -> SessionRecord | None:
        """Cache a fetched answer; returns the record as stored (see _shared_user)."""
        data = self._data
        entry = data.get(session_id)
        if record is None and self._negative_ttl <= 0:
            if entry is not None:
                self._drop(entry)
            return None
        if record is not None:
            record = self._shared_user(record)
        now = self._clock()
        self._wall_offset = self._wall_clock() - now
        if entry is not None:
            old = entry.record
            if old is not None and (record is None or old.user_id != record.user_id):
                self._unindex(entry.key, old.user_id)
            # ``record`` before ``fetched``: see _Entry.
            entry.record = record
            entry.fetched = now
            if entry.ref is False:  # asked for again: it is in use
                entry.ref = True
            if record is not None and (old is None or old.user_id != record.user_id):
                self._index(entry.key, record.user_id)
            return record
        while len(data) >= self._max_entries:
            self._evict_one()
        # Key by the record's own ID string when equal: one string object per entry.
        key = (
            record.session_id
            if record is not None and record.session_id == session_id
            else session_id
        )
        entry = _Entry(key, record, now)
        data[key] = entry
        self._order.append(entry)
        if record is not None:
            self._index(key, record.user_id)
        return record

    def _shared_user(self, record: SessionRecord) -> SessionRecord:
        """``record``, re-pointed at the user ID string already cached for that user.

        Backends build a new ``user_id`` string per record; for a user with several
        cached sessions one copy is enough (about 70 bytes saved per extra session).
        Costs a record copy on a miss, never anything on a hit.
        """
        current = self._users.get(record.user_id)
        if current is None:
            return record
        key = current if isinstance(current, str) else next(iter(current))
        other = self._data.get(key)
        shared = other.record.user_id if other is not None and other.record is not None else None
        if shared is None or shared is record.user_id:
            return record
        return dataclasses.replace(record, user_id=shared)

    def _evict_one(self) -> None:
        data = self._data
        order = self._order
        while True:
            entry = order.popleft()
            if data.get(entry.key) is not entry:
                self._dead -= 1
                continue
            ref = entry.ref
            if ref is not False:  # second chance (a float is a tracked request time)
                if ref is not True:
                    self._unreported[entry.key] = ref
                entry.ref = False
                order.append(entry)
                continue
            del data[entry.key]
            if entry.record is not None:
                self._unindex(entry.key, entry.record.user_id)
            self._counts["evictions"] += 1
            return

    def _drop(self, entry: _Entry) -> None:
        """Remove a live entry outside eviction; its queue slot goes dead."""
        del self._data[entry.key]
        if entry.record is not None:
            self._unindex(entry.key, entry.record.user_id)
        self._dead += 1
        if self._dead > 64 and self._dead > len(self._data):
            data = self._data
            self._order = collections.deque(e for e in self._order if data.get(e.key) is e)
            self._dead = 0

    def _index(self, key: str, user_id: str) -> None:
        users = self._users
        current = users.get(user_id)
        if current is None:
            users[user_id] = key
        elif isinstance(current, str):
            if current != key:
                users[user_id] = (current, key)
        elif isinstance(current, tuple):
            if key not in current:
                users[user_id] = (*current, key) if len(current) < _TUPLE_MAX else {*current, key}
        else:
            current.add(key)

    def _unindex(self, key: str, user_id: str) -> None:
        users = self._users
        current = users.get(user_id)
        if current is None:
            return
        if isinstance(current, str):
            if current == key:
                del users[user_id]
        elif isinstance(current, tuple):
            rest = tuple(k for k in current if k != key)
            users[user_id] = rest[0] if len(rest) == 1 else rest
        else:
            current.discard(key)
            if len(current) == 1:
                users[user_id] = next(iter(current))

    def _user_keys(self, user_id: str) -> Iterable[str]:
        current = self._users.get(user_id)
        if current is None:
            return ()
        if isinstance(current, str):
            return (current,)
        return tuple(current)

    @staticmethod
    def _remember(table: collections.OrderedDict[str, _T], key: str, value: _T, limit: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)

    def _purge_expired_marks(self, now: float) -> None:
        # Both tables are in deadline order (constant ttl, monotonic clock, refreshed
        # keys moved to the end), so expired marks sit at the front.
        tombstones = self._tombstones
        while tombstones and next(iter(tombstones.values())) <= now:
            tombstones.popitem(last=False)
        watermarks = self._watermarks
        while watermarks and next(iter(watermarks.values()))[1] <= now:
            watermarks.popitem(last=False)

    # ------------------------------------------------------------------ invalidation

    def mark_revoked(self, session_id: str) -> None:
        """Revoke one session: flip its cached record and remember the revocation.

        The tombstone lives ``ttl`` seconds (at most ``max_entries`` of them), so a
        lookup that later brings back an *active* record (a lagging replica, or a
        fetch already in flight) still answers revoked.
        """
        if not session_id:
            return
        with self._lock:
            now = self._clock()
            self._purge_expired_marks(now)
            if self._ttl > 0:
                self._remember(self._tombstones, session_id, now + self._ttl, self._max_entries)
            entry = self._data.get(session_id)
            if entry is not None:
                record = entry.record
                if record is not None and record.status is _ACTIVE:
                    entry.record = dataclasses.replace(record, status=_REVOKED)
                    self._counts["revocations"] += 1

    def mark_user_revoked(self, user_id: str, before: float | None = None) -> None:
        """Revoke every session of ``user_id`` issued up to ``before`` (wall clock).

        ``before`` defaults to ``wall_clock()``, i.e. now, and is never later than
        now. Cached records of the user
        are flipped in O(that user's cached sessions) through the user index, except
        those whose ``issued_at`` is known and later than ``before`` (a fresh login
        stays active); a cached record with unknown ``issued_at`` is revoked. A
        watermark is remembered for ``ttl`` seconds: a record of that user fetched
        later is returned revoked when its ``issued_at`` is known and not after
        ``before``; one with unknown ``issued_at`` is revoked only if its fetch was
        already in flight when this call arrived (SPEC compares known times only).
        """
        if not user_id:
            return
        wall = self._wall_clock()
        if before is None or before > wall:
            before = wall  # no event revokes logins that happen after it arrived
        with self._lock:
            now = self._clock()
            self._purge_expired_marks(now)
            self._user_seq += 1
            previous = self._watermarks.get(user_id)
            if previous is not None and previous[1] > now:
                before = max(before, previous[0])
            if self._ttl > 0:
                self._remember(
                    self._watermarks,
                    user_id,
                    (before, now + self._ttl, self._user_seq),
                    self._max_entries,
                )
            for key in self._user_keys(user_id):
                entry = self._data[key]
                record = entry.record
                if (
                    record is not None
                    and record.status is _ACTIVE
                    and (record.issued_at is None or record.issued_at <= before)
                ):
                    entry.record = dataclasses.replace(record, status=_REVOKED)
                    self._counts["revocations"] += 1

    def invalidate(self, session_id: str) -> None:
        """Drop one cached entry (the next lookup asks the backend). Tombstones stay."""
        with self._lock:
            entry = self._data.get(session_id)
            if entry is not None:
                self._drop(entry)

    def clear(self) -> None:
        """Drop every cached entry (a ``flush`` event, a bus gap).

        A fetch in flight when this is called is not stored (its caller still gets
        its answer) and later lookups do not join it. Tombstones and watermarks are
        kept: they describe revocations, which a flush does not undo.
        """
        with self._lock:
            self._gen += 1
            self._data = {}
            self._order = collections.deque()
            self._dead = 0
            self._users = {}
            self._flights = {}

    def set_max_age(self, seconds: float | None) -> None:
        """Cap how long any entry is served without a re-check (``None``: plain TTLs).

        Used while the invalidation bus is disconnected (``bus_outage_ttl``): entries,
        known and unknown, fetched more than ``seconds`` ago go back to the backend.
        They stay cached, so ``stale_if_error`` (when set) can still serve an active
        one within ``ttl + stale_if_error`` of its fetch if the backend fails.
        """
        if seconds is not None and not seconds >= 0:
            raise ConfigError("max_age", f"must be a number >= 0, got {seconds!r}")
        with self._lock:
            self._max_age = seconds
            if seconds is None:
                self._pos_fresh, self._neg_fresh = self._ttl, self._negative_ttl
            else:
                self._pos_fresh = min(self._ttl, seconds)
                self._neg_fresh = min(self._negative_ttl, seconds)

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, int]:
        """Counters since creation. ``hits``/``negative_hits`` are approximate under
        thread contention (bumped without the lock); the rest are exact."""
        return {
            "hits": self._hits + self._allowed_hits,
            "misses": self._counts["misses"],
            "negative_hits": self._negative_hits,
            "coalesced": self._counts["coalesced"],
            "evictions": self._counts["evictions"],
            "expirations": self._counts["expirations"],
            "revocations": self._counts["revocations"],
            "backend_errors": self._counts["backend_errors"],
            "stale_served": self._counts["stale_served"],
        }

    def __repr__(self) -> str:
        return (
            f"<MemoryCache entries={len(self._data)} max_entries={self._max_entries} "
            f"ttl={self._ttl:g}>"
        )

    def _reset_after_fork(self) -> None:
        # The parent's threads do not exist here: a lock they held would never be
        # released, and their flights would never complete.
        self._lock = threading.Lock()
        self._flights = {}
        self._unreported = {}  # the parent's to report, not ours
