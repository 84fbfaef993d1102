"""MemoryCache under concurrency: single flight for threads and asyncio tasks,
failures reaching every waiter, revocations and clears racing a fetch in flight,
and the LRU bound holding under a flood of random IDs.

Races are driven with events and polled conditions (with a deadline), never by
sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sessionmw.cache import MISS, MemoryCache
from sessionmw.errors import BackendUnavailable
from sessionmw.records import SessionRecord, SessionStatus

ACTIVE = SessionStatus.ACTIVE
REVOKED = SessionStatus.REVOKED
DEADLINE = 20.0  # seconds: generous, only reached when something hangs
WALL = 1_767_225_600.0


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until true; fail after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        pause.wait(0.001)


async def async_wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)  # polling interval, not a race delay


class GatedBackend:
    """Every call blocks until ``release`` is set; then answers or raises ``error``.

    The async path waits without blocking its event loop (the wait runs in a
    worker thread).
    """

    def __init__(self, *records: SessionRecord) -> None:
        self.records = {r.session_id: r for r in records}
        self.release = threading.Event()
        self.entered = threading.Event()
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self.calls = 0

    def _answer(self, session_id: str) -> SessionRecord | None:
        if self.error is not None:
            raise self.error
        return self.records.get(session_id)

    def lookup(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        assert self.release.wait(DEADLINE), "backend never released"
        return self._answer(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        assert await asyncio.to_thread(self.release.wait, DEADLINE), "backend never released"
        return self._answer(session_id)


def rec(session_id: str, user_id: str = "u1", issued_at: float | None = None) -> SessionRecord:
    return SessionRecord(session_id, user_id, ACTIVE, issued_at=issued_at)


def run_threads(count: int, target: Callable[[], Any]) -> tuple[list[Any], list[Any]]:
    """Run ``target`` in ``count`` threads; returns (threads, result slots)."""
    results: list[Any] = [None] * count

    def worker(i: int) -> None:
        try:
            results[i] = target()
        except BaseException as exc:  # collected and asserted on by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a waiter hung"


# ---------------------------------------------------------------- single flight


def test_200_threads_one_backend_call() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    threads, results = run_threads(200, lambda: cache.lookup("s"))
    wait_until(lambda: cache.stats()["coalesced"] == 199, "199 coalesced waiters")
    assert backend.calls == 1
    backend.release.set()
    join_all(threads)
    assert backend.calls == 1
    assert all(r is results[0] for r in results)
    assert results[0] == rec("s")
    stats = cache.stats()
    assert stats["misses"] == 200
    assert stats["coalesced"] == 199


async def test_200_tasks_one_backend_call() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    tasks = [asyncio.create_task(cache.alookup("s")) for _ in range(200)]
    await async_wait_until(lambda: cache.stats()["coalesced"] == 199, "199 coalesced tasks")
    assert backend.calls == 1
    backend.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    assert backend.calls == 1
    assert all(r is results[0] for r in results)
    assert results[0] == rec("s")


def _run_loop_tasks(
    count: int, make: Callable[[], Coroutine[Any, Any, Any]], out: list[Any]
) -> threading.Thread:
    """A thread running its own event loop with ``count`` tasks; results into ``out``."""

    async def main() -> None:
        out.extend(await asyncio.gather(*(make() for _ in range(count)), return_exceptions=True))

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("leader", ["thread", "task"])
def test_threads_and_tasks_of_several_loops_share_one_flight(leader: str) -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    loop_results: list[Any] = []
    first: list[threading.Thread]
    if leader == "thread":
        first, thread_results = run_threads(1, lambda: cache.lookup("s"))
    else:
        first, thread_results = [_run_loop_tasks(1, lambda: cache.alookup("s"), [])], []
    wait_until(backend.entered.is_set, "the leader to reach the backend")
    threads, more = run_threads(100, lambda: cache.lookup("s"))
    loops = [_run_loop_tasks(50, lambda: cache.alookup("s"), loop_results) for _ in range(2)]
    wait_until(lambda: cache.stats()["coalesced"] == 200, "200 coalesced waiters")
    backend.release.set()
    join_all(first + threads + loops)
    assert backend.calls == 1
    answers = thread_results + more + loop_results
    assert len(answers) == (1 if leader == "thread" else 0) + 200
    assert all(a == rec("s") for a in answers), answers[:3]


def test_failure_reaches_every_thread_waiter() -> None:
    backend = GatedBackend(rec("s"))
    backend.error = BackendUnavailable("down")
    cache = MemoryCache(backend)
    threads, results = run_threads(200, lambda: cache.lookup("s"))
    wait_until(lambda: cache.stats()["coalesced"] == 199, "199 coalesced waiters")
    backend.release.set()
    join_all(threads)
    assert backend.calls == 1
    assert all(isinstance(r, BackendUnavailable) for r in results)
    assert cache.stats()["backend_errors"] == 1
    # The failure is not cached.
    backend.error = None
    assert cache.lookup("s") == rec("s")


async def test_failure_reaches_every_task_and_thread_waiter() -> None:
    backend = GatedBackend(rec("s"))
    backend.error = RuntimeError("boom")
    cache = MemoryCache(backend)
    tasks = [asyncio.create_task(cache.alookup("s")) for _ in range(200)]
    await async_wait_until(lambda: cache.stats()["coalesced"] == 199, "199 coalesced tasks")
    threads, thread_results = run_threads(20, lambda: cache.lookup("s"))
    await async_wait_until(lambda: cache.stats()["coalesced"] == 219, "20 more threads")
    backend.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE)
    await asyncio.to_thread(join_all, threads)
    assert backend.calls == 1
    assert all(isinstance(r, BackendUnavailable) for r in results + thread_results)


async def test_failure_with_stale_if_error_serves_every_waiter() -> None:
    clock = [0.0]
    backend = GatedBackend(rec("s"))
    backend.release.set()
    cache = MemoryCache(backend, ttl=10, stale_if_error=60, clock=lambda: clock[0])
    original = await cache.alookup("s")
    clock[0] = 20.0
    backend.release.clear()
    backend.entered.clear()
    backend.error = BackendUnavailable("down")
    tasks = [asyncio.create_task(cache.alookup("s")) for _ in range(50)]
    await async_wait_until(lambda: cache.stats()["coalesced"] == 49, "49 waiters")
    backend.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    assert all(r is original for r in results)
    assert cache.stats()["stale_served"] == 50


async def test_cancelled_waiter_does_not_cancel_the_flight() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    leader = asyncio.create_task(cache.alookup("s"))
    waiters = [asyncio.create_task(cache.alookup("s")) for _ in range(3)]
    await async_wait_until(lambda: cache.stats()["coalesced"] == 3, "3 waiters")
    waiters[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    backend.release.set()
    results = await asyncio.wait_for(asyncio.gather(leader, *waiters[1:]), DEADLINE)
    assert all(r == rec("s") for r in results)
    assert backend.calls == 1


async def test_cancelled_leader_hands_over_to_a_waiter() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    leader = asyncio.create_task(cache.alookup("s"))
    await async_wait_until(backend.entered.is_set, "the leader in the backend")
    threads, results = run_threads(1, lambda: cache.lookup("s"))
    await async_wait_until(lambda: cache.stats()["coalesced"] == 1, "a waiting thread")
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    # The thread retried as the new leader (a second backend call), not failed.
    await async_wait_until(lambda: backend.calls == 2, "the waiter to lead")
    backend.release.set()
    await asyncio.to_thread(join_all, threads)
    assert results == [rec("s")]


def test_no_backend_call_under_the_lock() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    threads, _ = run_threads(1, lambda: cache.lookup("s"))
    wait_until(backend.entered.is_set, "the fetch in flight")
    # While the backend is busy the cache stays fully usable.
    assert cache._lock.acquire(timeout=DEADLINE)
    cache._lock.release()
    cache.mark_revoked("other")
    assert len(cache) == 0
    assert cache.peek("s") is MISS
    backend.release.set()
    join_all(threads)


# ---------------------------------------------------------------- revocations racing a fetch


def _in_flight(
    backend: GatedBackend, cache: MemoryCache, session_id: str = "s"
) -> tuple[list[threading.Thread], list[Any]]:
    threads, results = run_threads(1, lambda: cache.lookup(session_id))
    wait_until(backend.entered.is_set, "the fetch in flight")
    return threads, results


def test_mark_revoked_during_fetch_wins() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    threads, results = _in_flight(backend, cache)
    cache.mark_revoked("s")
    backend.release.set()
    join_all(threads)
    cached = cache.peek("s")
    assert isinstance(cached, SessionRecord)
    assert cached.status is REVOKED
    assert results[0].status is REVOKED
    assert cache.stats()["revocations"] == 1


@pytest.mark.parametrize("issued_at", [None, WALL - 10])
def test_mark_user_revoked_during_fetch_wins(issued_at: float | None) -> None:
    backend = GatedBackend(rec("s", "alice", issued_at=issued_at), rec("t", "bob"))
    cache = MemoryCache(backend, wall_clock=lambda: WALL)
    threads, results = _in_flight(backend, cache)
    cache.mark_user_revoked("alice")
    backend.release.set()
    join_all(threads)
    cached = cache.peek("s")
    assert isinstance(cached, SessionRecord)
    assert cached.status is REVOKED
    assert results[0].status is REVOKED
    # Another user's session fetched afterwards is untouched.
    assert cache.lookup("t").status is ACTIVE  # type: ignore[union-attr]


def test_fresh_login_fetched_during_user_revocation_stays_active() -> None:
    backend = GatedBackend(rec("s", "alice", issued_at=WALL + 5))
    cache = MemoryCache(backend, wall_clock=lambda: WALL + 10)
    threads, results = _in_flight(backend, cache)
    cache.mark_user_revoked("alice", before=WALL)
    backend.release.set()
    join_all(threads)
    assert results[0].status is ACTIVE
    assert cache.peek("s").status is ACTIVE  # type: ignore[union-attr]


def test_user_revocation_before_fetch_does_not_touch_unknown_issue_time() -> None:
    # The SPEC compares known issue times only: a revocation that was over before
    # the fetch started does not revoke a record whose issued_at is unknown.
    backend = GatedBackend(rec("s", "alice"))
    backend.release.set()
    cache = MemoryCache(backend)
    cache.mark_user_revoked("alice")
    assert cache.lookup("s").status is ACTIVE  # type: ignore[union-attr]


async def test_async_revocation_during_fetch_wins() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    task = asyncio.create_task(cache.alookup("s"))
    await async_wait_until(backend.entered.is_set, "the fetch in flight")
    cache.mark_revoked("s")
    backend.release.set()
    result = await asyncio.wait_for(task, DEADLINE)
    assert result is not None
    assert result.status is REVOKED
    assert cache.peek("s") == result


def test_clear_during_fetch_stores_nothing() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    threads, results = _in_flight(backend, cache)
    cache.clear()
    # A lookup after the clear does not join the pre-clear fetch.
    late, late_results = run_threads(1, lambda: cache.lookup("s"))
    wait_until(lambda: backend.calls == 2, "a second, post-clear fetch")
    backend.release.set()
    join_all(threads + late)
    assert results[0] == rec("s")  # the in-flight caller still gets its answer
    assert late_results[0] == rec("s")
    assert len(cache) == 1  # stored by the post-clear fetch only


def test_clear_during_fetch_alone_leaves_cache_empty() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    threads, results = _in_flight(backend, cache)
    cache.clear()
    backend.release.set()
    join_all(threads)
    assert results[0] == rec("s")
    assert len(cache) == 0
    assert cache.peek("s") is MISS


def test_invalidate_during_fetch_is_harmless() -> None:
    backend = GatedBackend(rec("s"))
    cache = MemoryCache(backend)
    threads, results = _in_flight(backend, cache)
    cache.invalidate("s")
    backend.release.set()
    join_all(threads)
    assert results[0] == rec("s")
    assert cache.peek("s") == rec("s")


# ---------------------------------------------------------------- floods and mixed load


class CountingBackend:
    """Knows nothing; counts calls (thread-safe)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def lookup(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            self.calls += 1
        return None

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)


def test_million_random_ids_stay_within_bound() -> None:
    backend = CountingBackend()
    cache = MemoryCache(backend, max_entries=10_000, negative_ttl=5)
    rng = random.Random(7)
    seen: set[str] = set()
    lookup = cache.lookup
    last = ""
    for i in range(1_000_000):
        # Mostly new IDs; one in eight repeats the previous one (still cached: a hit).
        if i % 8 == 7:
            session_id = last
        else:
            session_id = last = f"{rng.getrandbits(64):016x}"
        seen.add(session_id)
        assert lookup(session_id) is None
        if i % 10_000 == 0:
            assert len(cache) <= 10_000
    assert len(cache) == 10_000
    assert backend.calls == len(seen)
    stats = cache.stats()
    assert stats["negative_hits"] == 125_000
    assert stats["evictions"] == len(seen) - 10_000


def test_mixed_threads_keep_invariants() -> None:
    records = [rec(f"s{i}", f"u{i % 20}", issued_at=WALL) for i in range(300)]

    class Backend(CountingBackend):
        def lookup(self, session_id: str) -> SessionRecord | None:
            super().lookup(session_id)
            return by_id.get(session_id)

    by_id = {r.session_id: r for r in records}
    cache = MemoryCache(Backend(), max_entries=100)
    revoked_users = {f"u{i}" for i in range(0, 20, 2)}
    for user in revoked_users:
        cache.mark_user_revoked(user, before=float("inf"))

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3000):
            record = cache.lookup(f"s{rng.randrange(400)}")
            if record is not None and record.user_id in revoked_users:
                assert record.status is REVOKED
            assert len(cache) <= 100

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(worker, seed) for seed in range(8)]:
            future.result(DEADLINE)
    assert len(cache) <= 100
