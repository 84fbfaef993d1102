"""Hit-path cost and memory per entry of :class:`sessionmw.cache.MemoryCache`.

Run with ``python -m benchmarks.bench_cache``. Every number is measured in the same
run as its baselines, rounds interleaved, medians reported:

* hit cost on 100,000 cached entries, uniform and Zipf(1.1) keys, 1 and 2 threads,
  of ``MemoryCache.lookup`` and ``MemoryCache.peek`` against plain ``dict.get`` (the
  floor), a minimal ``OrderedDict`` LRU + TTL check under a ``threading.Lock``, and
  ``cachetools.TTLCache`` under a lock;
* memory per cached entry with :mod:`tracemalloc` at 100,000 entries, 1 and 4
  sessions per user, including the ID strings and the records a minimal backend
  builds, against a minimal reference (record + ``OrderedDict`` LRU + user index);
  with activity tracking off, and on (what a gate builds for a store with
  ``touch_many``: the cache plus an :class:`~sessionmw.activity.ActivityFlusher`,
  the store's records carrying ``last_seen`` as SQL and Redis rows do);
* the activity structures' own cost per session, beside the cache: what the
  request path records (the time of the request, kept in the entry's CLOCK mark
  until the flusher collects it: one float), the flusher's ``pending`` (waiting for
  the next flush) and, with ``idle_timeout``, its ``latest`` (last known activity
  per session, trimmed as sessions go idle or leave the cache).

Targets: ``lookup`` at or below the OrderedDict+Lock cost and >= 2.5x faster than
cachetools+Lock; <= 650 B/entry (1 session/user) and <= 400 B/entry (4/user).
"""

from __future__ import annotations

import collections
import functools
import gc
import random
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import cachetools

from benchmarks._common import (
    format_table,
    interleaved_rounds,
    ns_per_op,
    ns_per_op_threaded,
    traced_bytes,
    uniform_keys,
    zipf_keys,
)
from sessionmw.activity import ActivityFlusher
from sessionmw.cache import MemoryCache
from sessionmw.records import SessionRecord, SessionStatus, StoredSession

ENTRIES = 100_000
OPS = 60_000  # lookups per measurement (split between threads)
ROUNDS = 5
TTL = 600.0
BASE_TIME = 1_767_225_600.0
FAR_FUTURE = 4_102_444_800.0  # 2100-01-01

TARGET_LOOKUP_VS_ODICT = 1.0  # lookup cost / OrderedDict+Lock cost, at most
TARGET_SPEEDUP_VS_CACHETOOLS = 2.5
TARGET_BYTES = {1: 650, 4: 400}


def session_ids(count: int) -> list[str]:
    # 32 characters, the size of a typical opaque token.
    return [f"sess_{i:027x}" for i in range(count)]


class MinimalBackend:
    """Builds a fresh record per lookup, as a real store's driver would.

    Every field is a new object (user ID string, timestamps): nothing is shared
    between records that a real backend would not share either.
    """

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self.calls = 0

    def lookup(self, session_id: str) -> SessionRecord | None:
        self.calls += 1
        number = int(session_id[5:], 16)
        return SessionRecord(
            session_id=session_id,
            user_id=f"user_{number // self.per_user:020d}",
            status=SessionStatus.ACTIVE,
            expires_at=BASE_TIME + 86_400.0 + number,
            issued_at=BASE_TIME + number,
        )

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)


class TouchingBackend(MinimalBackend):
    """A store sessionmw writes ``last_seen`` to (SQL, Redis): lookups return the
    richer :class:`StoredSession` (with ``last_seen``) and it has ``touch_many``.
    Sessions expire years from now (a request on an expired one records nothing)."""

    def lookup(self, session_id: str) -> SessionRecord | None:
        record = super().lookup(session_id)
        assert record is not None
        return StoredSession(
            record.session_id,
            record.user_id,
            record.status,
            FAR_FUTURE + int(session_id[5:], 16),
            record.issued_at,
            last_seen=BASE_TIME + 3_600.0 + int(session_id[5:], 16),
        )

    def touch_many(self, items: Any) -> None:
        self.touched = len(items)


class OrderedDictLRU:
    """The minimal correct alternative: OrderedDict LRU + TTL check under a lock."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        self._data: collections.OrderedDict[str, tuple[SessionRecord, float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._max = max_entries
        self._ttl = ttl
        self._clock = time.monotonic

    def put(self, record: SessionRecord) -> None:
        with self._lock:
            self._data[record.session_id] = (record, self._clock() + self._ttl)
            self._data.move_to_end(record.session_id)
            if len(self._data) > self._max:
                self._data.popitem(last=False)

    def get(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            item = self._data.get(session_id)
            if item is None or item[1] <= self._clock():
                return None
            self._data.move_to_end(session_id)
            return item[0]


class LockedTTLCache:
    """``cachetools.TTLCache`` made thread-safe the documented way: an outer lock."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        self._cache: cachetools.TTLCache[str, SessionRecord] = cachetools.TTLCache(max_entries, ttl)
        self._lock = threading.Lock()

    def put(self, record: SessionRecord) -> None:
        with self._lock:
            self._cache[record.session_id] = record

    def get(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._cache.get(session_id)


def build_candidates(ids: list[str]) -> dict[str, Callable[[str], object]]:
    backend = MinimalBackend(per_user=1)
    records = [backend.lookup(i) for i in ids]
    floor = {r.session_id: r for r in records if r is not None}
    odict = OrderedDictLRU(ENTRIES, TTL)
    ttlcache = LockedTTLCache(ENTRIES, TTL)
    for record in floor.values():
        odict.put(record)
        ttlcache.put(record)
    cache = MemoryCache(backend, max_entries=ENTRIES, ttl=TTL)
    for session_id in ids:
        cache.lookup(session_id)
    assert len(cache) == ENTRIES
    assert backend.calls == 2 * ENTRIES
    return {
        "dict.get (floor)": floor.get,
        "OrderedDict LRU+TTL+Lock": odict.get,
        "cachetools.TTLCache+Lock": ttlcache.get,
        "MemoryCache.lookup": cache.lookup,
        "MemoryCache.peek": cache.peek,
    }


def bench_hit_path() -> list[list[object]]:
    rng = random.Random(1)
    ids = session_ids(ENTRIES)
    candidates = build_candidates(ids)
    workloads: dict[str, Callable[[int], list[str]]] = {
        "uniform": lambda n: uniform_keys(ids, n, rng),
        "zipf": lambda n: zipf_keys(ids, n, rng),
    }
    rows: list[list[object]] = []
    for dist, make_keys in workloads.items():
        one = make_keys(OPS)
        two = [make_keys(OPS // 2), make_keys(OPS // 2)]
        cases: dict[str, Callable[[], float]] = {}
        for name, fn in candidates.items():
            cases[f"{name}|1"] = functools.partial(ns_per_op, fn, one)
            cases[f"{name}|2"] = functools.partial(ns_per_op_threaded, fn, two)
        medians = interleaved_rounds(cases, ROUNDS)
        for threads in (1, 2):
            floor = medians[f"dict.get (floor)|{threads}"]
            odict = medians[f"OrderedDict LRU+TTL+Lock|{threads}"]
            ttlc = medians[f"cachetools.TTLCache+Lock|{threads}"]
            for name in candidates:
                ns = medians[f"{name}|{threads}"]
                rows.append(
                    [
                        f"{dist}, {threads} thr",
                        name,
                        f"{ns:.0f}",
                        f"{ns / floor:.2f}x",
                        f"{ns / odict:.2f}",
                        f"{ttlc / ns:.2f}x",
                    ]
                )
    return rows


def measure_memory_cache(per_user: int) -> int:
    def build() -> Any:
        ids = session_ids(ENTRIES)
        cache = MemoryCache(MinimalBackend(per_user), max_entries=ENTRIES, ttl=TTL)
        for session_id in ids:
            cache.lookup(session_id)
        del ids  # the cache keeps what it needs
        return cache

    size, cache = traced_bytes(build)
    assert len(cache) == ENTRIES
    return size


def _traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def measure_activity(per_user: int) -> dict[str, float]:
    """Bytes per session, activity tracking on (what a gate builds for a store with
    ``touch_many``), phase by phase in one traced run:

    * ``cache``: the cache's entries, IDs and records;
    * ``requests``: one request per cached session since the flusher last collected
      (each entry's CLOCK mark then holds the request's time: one float);
    * ``pending``: those requests collected, waiting for the next flush;
    * ``latest``: with ``idle_timeout``, the flusher's last known activity per
      session, filled by every fetch (the store's ``last_seen``) and every collected
      request.
    """
    gc.collect()
    tracemalloc.start()
    try:
        start = _traced_now()
        backend = TouchingBackend(per_user)
        cache = MemoryCache(backend, max_entries=ENTRIES, ttl=TTL)
        flusher = ActivityFlusher(cache, backend, touch_interval=60.0, idle_timeout=3600.0)
        assert cache.track_activity
        ids = session_ids(ENTRIES)
        for session_id in ids:
            cache.lookup(session_id)
        del ids
        fetched = _traced_now()
        assert len(flusher.latest) == ENTRIES
        # Every cached session makes one request; the header value is a new string
        # per request (as a server decodes it), not the cache's key object.
        for session_id in list(cache._data):
            assert cache.hit(session_id.encode().decode()) is not None
        requested = _traced_now()
        assert sum(entry.ref is not True for entry in cache._data.values()) == ENTRIES
        flusher.collect()
        collected = _traced_now()
        assert len(flusher.pending) == ENTRIES
        flusher.flush()
        assert backend.touched == ENTRIES
        flushed = _traced_now()
        assert not flusher.pending
        assert not cache.take_activity()
        assert len(flusher.latest) == ENTRIES
        flusher.latest.clear()
        cleared = _traced_now()
    finally:
        tracemalloc.stop()
    return {
        "cache": (cleared - start) / ENTRIES,
        "requests": (requested - fetched) / ENTRIES,
        "pending": (collected - flushed) / ENTRIES,
        "latest": (flushed - cleared) / ENTRIES,
    }


def measure_reference(per_user: int) -> int:
    def build() -> Any:
        backend = MinimalBackend(per_user)
        lru: collections.OrderedDict[str, tuple[SessionRecord, float]] = collections.OrderedDict()
        users: dict[str, set[str]] = {}
        for session_id in session_ids(ENTRIES):
            record = backend.lookup(session_id)
            assert record is not None
            lru[session_id] = (record, time.monotonic() + TTL)
            users.setdefault(record.user_id, set()).add(session_id)
        return lru, users

    size, _ = traced_bytes(build)
    return size


def bench_memory() -> tuple[list[list[object]], list[list[object]]]:
    """(the per-entry table, the activity structures' table)."""
    rows: list[list[object]] = []
    activity_rows: list[list[object]] = []
    for per_user in (1, 4):
        ours = measure_memory_cache(per_user) / ENTRIES
        activity = measure_activity(per_user)
        reference = measure_reference(per_user) / ENTRIES
        target = TARGET_BYTES[per_user]
        worst = max(ours, activity["cache"])
        rows.append(
            [
                f"{per_user} session(s)/user",
                f"{ours:.0f}",
                f"{activity['cache']:.0f}",
                f"{reference:.0f}",
                f"<= {target}",
                "ok" if worst <= target else "MISSED",
            ]
        )
        activity_rows.append(
            [
                f"{per_user} session(s)/user",
                f"{activity['requests']:.0f}",
                f"{activity['pending']:.0f}",
                f"{activity['latest']:.0f}",
            ]
        )
    return rows, activity_rows


def main() -> int:
    started = time.perf_counter()
    print(f"Python {sys.version.split()[0]}, {ENTRIES:,} cached entries, {OPS:,} hits per run,")
    print(f"median of {ROUNDS} interleaved rounds (ns per hit, wall clock / total hits)\n")
    rows = bench_hit_path()
    print(
        format_table(
            ["workload", "implementation", "ns/hit", "vs floor", "vs OrderedDict", "cachetools /"],
            rows,
        )
    )
    failures = []
    for row in rows:
        if row[1] == "MemoryCache.lookup":
            if float(str(row[4])) > TARGET_LOOKUP_VS_ODICT:
                failures.append(f"lookup slower than OrderedDict+Lock ({row[0]})")
            if float(str(row[5]).rstrip("x")) < TARGET_SPEEDUP_VS_CACHETOOLS:
                failures.append(f"lookup < {TARGET_SPEEDUP_VS_CACHETOOLS}x cachetools ({row[0]})")
    print("\nMemory per cached entry (tracemalloc, IDs + records + cache structures)\n")
    memory_rows, activity_rows = bench_memory()
    print(
        format_table(
            ["sessions", "activity off B", "activity on B", "reference B", "target", "status"],
            memory_rows,
        )
    )
    print(
        "\nActivity tracking, bytes per session beside the cache (activity on: a store"
        "\nwith touch_many; one request per session, each with its own decoded ID string)\n"
    )
    print(
        format_table(
            [
                "sessions",
                "requests since collect B",
                "pending flush B",
                "latest (with idle_timeout) B",
            ],
            activity_rows,
        )
    )
    failures += [f"memory target missed: {row[0]}" for row in memory_rows if row[5] != "ok"]
    print(f"\ntargets: {'all met' if not failures else '; '.join(failures)}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
