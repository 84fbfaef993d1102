"""Behaviour of MemoryCache with an injected clock and a scripted backend."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
from structlog.testing import capture_logs

from sessionmw._log import BACKEND_UNAVAILABLE
from sessionmw.backends import MemoryBackend
from sessionmw.cache import MISS, MemoryCache
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import SessionRecord, SessionStatus

ACTIVE = SessionStatus.ACTIVE
REVOKED = SessionStatus.REVOKED
WALL = 1_767_225_600.0


class Clock:
    """A settable clock (monotonic or wall)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedBackend:
    """A dict-backed store counting calls; ``error`` makes every call raise it."""

    def __init__(self, *records: SessionRecord) -> None:
        self.records = {r.session_id: r for r in records}
        self.calls: list[str] = []
        self.error: BaseException | None = None

    def put(self, record: SessionRecord) -> None:
        self.records[record.session_id] = record

    def lookup(self, session_id: str) -> SessionRecord | None:
        self.calls.append(session_id)
        if self.error is not None:
            raise self.error
        return self.records.get(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)


def rec(
    session_id: str,
    user_id: str = "u1",
    status: SessionStatus = ACTIVE,
    issued_at: float | None = None,
) -> SessionRecord:
    return SessionRecord(session_id, user_id, status, expires_at=None, issued_at=issued_at)


def make(
    *records: SessionRecord, **kwargs: object
) -> tuple[MemoryCache, ScriptedBackend, Clock, Clock]:
    backend = ScriptedBackend(*records)
    clock, wall = Clock(), Clock(WALL)
    cache = MemoryCache(backend, clock=clock, wall_clock=wall, **kwargs)  # type: ignore[arg-type]
    return cache, backend, clock, wall


# ---------------------------------------------------------------- basics


def test_miss_then_hit_calls_backend_once() -> None:
    cache, backend, _, _ = make(rec("a"))
    first = cache.lookup("a")
    assert first == rec("a")
    assert cache.lookup("a") is first
    assert cache.peek("a") is first
    assert backend.calls == ["a"]
    stats = cache.stats()
    assert stats["misses"] == 1
    assert stats["hits"] == 2


def test_hit_is_the_fast_path_for_fresh_active_unexpired_records() -> None:
    cache, backend, clock, wall = make(
        rec("a"),
        rec("gone", status=REVOKED),
        dataclasses.replace(rec("soon"), expires_at=WALL + 30),
        dataclasses.replace(rec("old"), expires_at=WALL - 1),
        ttl=60,
    )
    assert cache.hit("a") is None, "not cached: no backend call either"
    assert backend.calls == []
    for sid in ("a", "gone", "soon", "old", "nope"):
        cache.lookup(sid)
    assert cache.hit("a") is cache.peek("a")
    assert cache.hit("gone") is None
    assert cache.hit("nope") is None
    assert cache.hit("old") is None
    assert cache.hit("soon") is not None
    assert cache.allowed_hits == 2
    stats = cache.stats()
    assert stats["hits"] == 1 + 2  # peek + the two hit() hits
    clock.advance(30)
    wall.advance(30)
    assert cache.hit("soon") is None, "expired now"
    assert cache.hit("a") is not None
    clock.advance(30)
    assert cache.hit("a") is None, "stale: the full path re-fetches"
    cache.mark_revoked("a")
    assert cache.hit("a") is None
    assert len(backend.calls) == 5
    assert cache.allowed_hits == 3


def test_hit_never_returns_a_revoked_record() -> None:
    cache, _, _, _ = make(rec("a", "u"), rec("b", "u"))
    cache.lookup("a")
    cache.lookup("b")
    assert cache.hit("a") is not None
    cache.mark_revoked("a")
    cache.mark_user_revoked("u")
    assert cache.hit("a") is None
    assert cache.hit("b") is None


async def test_alookup_miss_then_hit() -> None:
    cache, backend, _, _ = make(rec("a"))
    first = await cache.alookup("a")
    assert first == rec("a")
    assert await cache.alookup("a") is first
    assert cache.lookup("a") is first
    assert backend.calls == ["a"]


def test_empty_id_is_none_without_backend_call() -> None:
    cache, backend, _, _ = make()
    assert cache.lookup("") is None
    assert cache.peek("") is MISS
    assert backend.calls == []
    assert len(cache) == 0


async def test_async_empty_id() -> None:
    cache, backend, _, _ = make()
    assert await cache.alookup("") is None
    assert backend.calls == []


def test_peek_never_calls_backend() -> None:
    cache, backend, _, _ = make(rec("a"))
    assert cache.peek("a") is MISS
    assert backend.calls == []
    assert repr(MISS) == "MISS"


def test_revoked_record_from_backend_is_returned_revoked() -> None:
    cache, _, _, _ = make(rec("a", status=REVOKED))
    record = cache.lookup("a")
    assert record is not None
    assert record.status is REVOKED


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_entries", 0), ("max_entries", 1.5), ("ttl", -1), ("negative_ttl", "x")],
)
def test_bad_configuration(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        MemoryCache(MemoryBackend(), **{key: value})  # type: ignore[arg-type]
    assert info.value.key == key


def test_len_invalidate_and_clear() -> None:
    cache, backend, _, _ = make(rec("a"), rec("b", "u2"))
    cache.lookup("a")
    cache.lookup("b")
    cache.lookup("unknown")
    assert len(cache) == 3
    cache.invalidate("a")
    cache.invalidate("never-cached")
    assert len(cache) == 2
    assert cache.peek("a") is MISS
    cache.lookup("a")
    assert backend.calls.count("a") == 2
    cache.clear()
    assert len(cache) == 0
    assert cache.peek("b") is MISS
    cache.lookup("b")
    assert backend.calls.count("b") == 2
    # The user index was dropped with everything else and rebuilt on re-fetch.
    cache.mark_user_revoked("u2")
    assert cache.lookup("b").status is REVOKED  # type: ignore[union-attr]


def test_stats_keys_and_counts() -> None:
    cache, backend, clock, _ = make(rec("a"), max_entries=2, negative_ttl=5)
    cache.lookup("a")
    cache.lookup("a")
    cache.lookup("x")
    cache.lookup("x")
    clock.advance(601)
    cache.lookup("a")  # expired: refetched
    cache.mark_revoked("a")
    cache.lookup("y")  # evicts one
    backend.error = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        cache.lookup("z")
    assert cache.stats() == {
        "hits": 1,
        "misses": 5,
        "negative_hits": 1,
        "coalesced": 0,
        "evictions": 1,
        "expirations": 1,
        "revocations": 1,
        "backend_errors": 1,
        "stale_served": 0,
    }


# ---------------------------------------------------------------- TTL and LRU


def test_ttl_expiry_with_injected_clock() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=10)
    cache.lookup("a")
    clock.advance(9.99)
    assert cache.peek("a") is not MISS
    clock.advance(0.01)
    assert cache.peek("a") is MISS
    assert len(cache) == 1  # kept for stale_if_error until refreshed or evicted
    backend.put(rec("a", "u2"))
    refreshed = cache.lookup("a")
    assert refreshed is not None
    assert refreshed.user_id == "u2"
    assert backend.calls == ["a", "a"]
    assert cache.stats()["expirations"] == 1
    # The user index followed the change of user.
    cache.mark_user_revoked("u1")
    assert cache.peek("a") is refreshed
    cache.mark_user_revoked("u2")
    assert cache.peek("a").status is REVOKED  # type: ignore[union-attr]


def test_recently_used_entry_survives_eviction_of_unused_ones() -> None:
    records = [rec(f"s{i}", f"u{i}") for i in range(10)]
    cache, _, _, _ = make(*records, max_entries=4)
    for i in range(4):
        cache.lookup(f"s{i}")
    assert cache.lookup("s0") is not None  # s0 is now recently used
    cache.lookup("s4")
    cache.lookup("s5")
    cache.lookup("s6")
    assert len(cache) == 4
    assert cache.peek("s0") is not MISS
    for gone in ("s1", "s2", "s3"):
        assert cache.peek(gone) is MISS
    assert cache.stats()["evictions"] == 3


def test_entry_used_between_evictions_keeps_surviving() -> None:
    cache, _, _, _ = make(*[rec(f"s{i}", f"u{i}") for i in range(100)], max_entries=5)
    cache.lookup("hot")
    for i in range(100):
        cache.lookup(f"s{i}")
        assert cache.peek("hot") is None  # a hit: referenced again
        assert len(cache) <= 5
    assert cache.peek("hot") is None


def test_eviction_keeps_user_index_consistent() -> None:
    records = [rec(f"s{i}", f"u{i % 3}") for i in range(30)]
    cache, _, _, _ = make(*records, max_entries=5)
    for r in records:
        cache.lookup(r.session_id)
    assert len(cache) == 5
    users = cache._users
    indexed = set()
    for user_id, value in users.items():
        keys = {value} if isinstance(value, str) else set(value)
        assert keys
        for key in keys:
            entry = cache._data[key]
            assert entry.record is not None
            assert entry.record.user_id == user_id
        indexed |= keys
    assert indexed == {k for k, e in cache._data.items() if e.record is not None}
    # Revoking a user touches only its cached sessions, none of the evicted ones.
    cache.mark_user_revoked("u0")
    for key, entry in cache._data.items():
        assert entry.record is not None
        expected = REVOKED if entry.record.user_id == "u0" else ACTIVE
        assert entry.record.status is expected, key


def test_user_index_grows_from_str_to_tuple_to_set_and_back() -> None:
    records = [rec(f"s{i}", "many") for i in range(12)]
    cache, _, _, _ = make(*records)
    for r in records:
        cache.lookup(r.session_id)
    assert isinstance(cache._users["many"], set)
    # Every cached record of the user shares one user ID string.
    assert len({id(e.record.user_id) for e in cache._data.values() if e.record}) == 1
    for i in range(11):
        cache.invalidate(f"s{i}")
    remaining: object = cache._users["many"]
    assert remaining == "s11"
    cache.invalidate("s11")
    assert "many" not in cache._users


def test_mark_user_revoked_touches_only_that_user() -> None:
    cache, backend, _, _ = make(rec("a1", "alice"), rec("a2", "alice"), rec("b1", "bob"))
    for sid in ("a1", "a2", "b1"):
        cache.lookup(sid)
    cache.mark_user_revoked("alice")
    assert cache.peek("a1").status is REVOKED  # type: ignore[union-attr]
    assert cache.peek("a2").status is REVOKED  # type: ignore[union-attr]
    assert cache.peek("b1").status is ACTIVE  # type: ignore[union-attr]
    assert cache.stats()["revocations"] == 2
    assert len(backend.calls) == 3
    cache.mark_user_revoked("nobody")
    cache.mark_user_revoked("")


def test_mark_revoked_flips_in_place_without_backend() -> None:
    cache, backend, _, _ = make(rec("a"))
    original = cache.lookup("a")
    cache.mark_revoked("a")
    revoked = cache.lookup("a")
    assert revoked == dataclasses.replace(original, status=REVOKED)  # type: ignore[type-var]
    assert backend.calls == ["a"]
    cache.mark_revoked("a")  # idempotent
    assert cache.stats()["revocations"] == 1
    cache.mark_revoked("")


# ---------------------------------------------------------------- negative caching


def test_negative_caching() -> None:
    cache, backend, clock, _ = make(negative_ttl=5)
    assert cache.lookup("nope") is None
    assert cache.lookup("nope") is None
    assert cache.peek("nope") is None
    assert backend.calls == ["nope"]
    assert cache.stats()["negative_hits"] == 2
    clock.advance(5)
    assert cache.peek("nope") is MISS
    backend.put(rec("nope"))
    assert cache.lookup("nope") == rec("nope")
    assert len(cache) == 1


def test_negative_ttl_zero_caches_nothing() -> None:
    cache, backend, clock, _ = make(rec("a"), negative_ttl=0, ttl=10)
    assert cache.lookup("nope") is None
    assert cache.lookup("nope") is None
    assert backend.calls == ["nope", "nope"]
    assert len(cache) == 0
    # A cached record that the backend no longer knows is dropped, not kept.
    cache.lookup("a")
    del backend.records["a"]
    clock.advance(10)
    assert cache.lookup("a") is None
    assert len(cache) == 0


def test_negative_entries_share_the_lru_bound() -> None:
    cache, _, _, _ = make(max_entries=10)
    for i in range(100):
        cache.lookup(f"random{i}")
        assert len(cache) <= 10
    assert cache.stats()["evictions"] == 90


# ---------------------------------------------------------------- tombstones & watermarks


def test_tombstone_for_uncached_id_beats_lagging_backend() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=60)
    cache.mark_revoked("a")
    assert len(cache) == 0
    record = cache.lookup("a")  # the replica still says active
    assert record is not None
    assert record.status is REVOKED
    assert cache.stats()["revocations"] == 1
    # Cached as revoked; after the TTL the tombstone is gone and the backend rules.
    clock.advance(60)
    assert cache.lookup("a").status is ACTIVE  # type: ignore[union-attr]
    assert backend.calls == ["a", "a"]


def test_tombstone_survives_invalidate_and_clear() -> None:
    cache, _, _, _ = make(rec("a"))
    cache.mark_revoked("a")
    cache.clear()
    assert cache.lookup("a").status is REVOKED  # type: ignore[union-attr]
    cache.invalidate("a")
    assert cache.lookup("a").status is REVOKED  # type: ignore[union-attr]


def test_tombstones_are_bounded_by_max_entries() -> None:
    cache, _, _, _ = make(*[rec(f"s{i}") for i in range(5)], max_entries=3)
    for i in range(5):
        cache.mark_revoked(f"s{i}")
    assert len(cache._tombstones) == 3
    # The oldest tombstones were dropped: s0 comes back as the backend says.
    assert cache.lookup("s0").status is ACTIVE  # type: ignore[union-attr]
    assert cache.lookup("s4").status is REVOKED  # type: ignore[union-attr]


def test_user_watermark_compares_issued_at() -> None:
    cache, _, clock, wall = make(
        rec("old", "u", issued_at=WALL - 100),
        rec("edge", "u", issued_at=WALL),
        rec("fresh", "u", issued_at=WALL + 1),
        rec("unknown", "u", issued_at=None),
        rec("other", "v", issued_at=WALL - 100),
        ttl=60,
    )
    cache.mark_user_revoked("u")  # before = wall clock now = WALL
    assert cache.lookup("old").status is REVOKED  # type: ignore[union-attr]
    assert cache.lookup("edge").status is REVOKED  # type: ignore[union-attr]
    assert cache.lookup("fresh").status is ACTIVE  # type: ignore[union-attr]
    # SPEC: only a known issued_at is compared with the watermark.
    assert cache.lookup("unknown").status is ACTIVE  # type: ignore[union-attr]
    assert cache.lookup("other").status is ACTIVE  # type: ignore[union-attr]
    # The watermark lives ttl seconds.
    clock.advance(60)
    wall.advance(60)
    assert cache.lookup("old").status is ACTIVE  # type: ignore[union-attr]


def test_user_watermark_with_explicit_before_and_cached_records() -> None:
    cache, _, _, _ = make(
        rec("old", "u", issued_at=WALL - 100),
        rec("new", "u", issued_at=WALL - 10),
        rec("unknown", "u", issued_at=None),
        rec("later", "u", issued_at=WALL - 80),
    )
    for sid in ("old", "new", "unknown"):
        cache.lookup(sid)
    cache.mark_user_revoked("u", before=WALL - 50)
    # Cached: issued before -> revoked; after -> stays active; unknown -> revoked.
    assert cache.peek("old").status is REVOKED  # type: ignore[union-attr]
    assert cache.peek("new").status is ACTIVE  # type: ignore[union-attr]
    assert cache.peek("unknown").status is REVOKED  # type: ignore[union-attr]
    assert cache.lookup("later").status is REVOKED  # type: ignore[union-attr]
    # A second event with an earlier `before` does not shrink the watermark.
    cache.mark_user_revoked("u", before=WALL - 1000)
    cache.invalidate("later")
    assert cache.lookup("later").status is REVOKED  # type: ignore[union-attr]


def test_user_watermark_before_in_the_future_is_clamped_to_now() -> None:
    """A producer's clock ahead of ours must not revoke logins that happen after
    the event arrived."""
    cache, _, clock, wall = make(
        rec("old", "u", issued_at=WALL - 10),
        rec("edge", "u", issued_at=WALL),
        rec("fresh", "u", issued_at=WALL + 5),
        ttl=60,
    )
    cache.lookup("edge")
    cache.mark_user_revoked("u", before=WALL + 3600)
    assert cache.peek("edge").status is REVOKED  # type: ignore[union-attr]
    assert cache.lookup("old").status is REVOKED  # type: ignore[union-attr]
    wall.advance(5)
    clock.advance(5)
    assert cache.lookup("fresh").status is ACTIVE  # type: ignore[union-attr]


# ---------------------------------------------------------------- backend failures


def test_backend_unavailable_propagates_and_is_logged_without_raw_id() -> None:
    cache, backend, _, _ = make()
    backend.error = BackendUnavailable("down")
    with capture_logs() as logs, pytest.raises(BackendUnavailable):
        cache.lookup("secret-session-id")
    assert cache.stats()["backend_errors"] == 1
    assert [entry["event"] for entry in logs] == [BACKEND_UNAVAILABLE]
    assert "secret-session-id" not in repr(logs)


@pytest.mark.parametrize(
    "error", [RuntimeError("boom secret-id"), KeyError("secret-id"), OSError()]
)
def test_any_backend_exception_becomes_backend_unavailable(error: Exception) -> None:
    cache, backend, _, _ = make()
    backend.error = error
    with capture_logs() as logs, pytest.raises(BackendUnavailable) as info:
        cache.lookup("secret-id")
    assert "secret-id" not in str(info.value)
    assert "secret-id" not in repr(logs)
    # The cause names the exception type; a message quoting the ID is scrubbed.
    assert logs[0]["cause"].split(":")[0] == type(error).__name__
    # Nothing was cached: the next lookup tries again.
    backend.error = None
    assert cache.lookup("secret-id") is None
    assert len(backend.calls) == 2


async def test_async_backend_exception_becomes_backend_unavailable() -> None:
    cache, backend, _, _ = make()
    backend.error = ValueError("x")
    with pytest.raises(BackendUnavailable):
        await cache.alookup("a")


def test_backend_returning_garbage_is_unavailable() -> None:
    class Garbage(ScriptedBackend):
        def lookup(self, session_id: str) -> SessionRecord | None:
            return {"user_id": "u"}  # type: ignore[return-value]

    cache = MemoryCache(Garbage())
    with pytest.raises(BackendUnavailable):
        cache.lookup("a")
    assert len(cache) == 0


def test_keyboard_interrupt_in_backend_is_not_swallowed() -> None:
    cache, backend, _, _ = make(rec("a"))
    backend.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        cache.lookup("a")
    backend.error = None
    assert cache.lookup("a") == rec("a")  # no flight left behind


def test_stale_if_error_serves_recently_expired_active_record() -> None:
    cache, backend, clock, _ = make(rec("a"), rec("b"), ttl=10, stale_if_error=30)
    original = cache.lookup("a")
    clock.advance(39)
    backend.error = BackendUnavailable("down")
    assert cache.lookup("a") is original
    assert cache.stats()["stale_served"] == 1
    clock.advance(1)  # expired by 30 s: no longer servable
    with pytest.raises(BackendUnavailable):
        cache.lookup("a")
    with pytest.raises(BackendUnavailable):
        cache.lookup("b")  # never cached


def test_stale_if_error_never_serves_revoked_or_negative() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=10, stale_if_error=30)
    cache.lookup("a")
    cache.lookup("gone")
    cache.mark_revoked("a")
    clock.advance(11)
    backend.error = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        cache.lookup("a")
    with pytest.raises(BackendUnavailable):
        cache.lookup("gone")
    assert cache.stats()["stale_served"] == 0


def test_stale_if_error_serves_nothing_cached_before_clear() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=10, stale_if_error=30)
    cache.lookup("a")
    cache.clear()
    clock.advance(11)
    backend.error = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        cache.lookup("a")


def test_stale_if_error_zero_fails_closed() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=10)
    cache.lookup("a")
    clock.advance(10)
    backend.error = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        cache.lookup("a")


async def test_async_stale_if_error() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=10, stale_if_error=30)
    original = await cache.alookup("a")
    clock.advance(15)
    backend.error = BackendUnavailable("down")
    assert await cache.alookup("a") is original


# ---------------------------------------------------------------- set_max_age


def test_set_max_age_forces_recheck_of_older_entries() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=600, negative_ttl=60)
    cache.lookup("a")
    cache.lookup("nope")
    clock.advance(6)
    cache.set_max_age(5)
    assert cache.peek("a") is MISS
    assert cache.peek("nope") is MISS
    cache.lookup("a")
    cache.lookup("nope")
    assert backend.calls == ["a", "nope", "a", "nope"]
    # Freshly re-checked entries serve until they are max_age old.
    clock.advance(4)
    assert cache.peek("a") is not MISS
    assert cache.peek("nope") is None
    cache.set_max_age(None)
    clock.advance(100)
    assert cache.peek("a") is not MISS  # back to the 600 s TTL
    assert cache.stats()["expirations"] == 0
    with pytest.raises(ConfigError):
        cache.set_max_age(-1)


def test_set_max_age_entries_still_serve_stale_if_error() -> None:
    cache, backend, clock, _ = make(rec("a"), rec("b"), ttl=600, stale_if_error=60)
    original = cache.lookup("a")
    cache.lookup("b")
    cache.mark_revoked("b")
    clock.advance(10)
    cache.set_max_age(5)
    backend.error = BackendUnavailable("down")
    assert cache.lookup("a") is original
    with pytest.raises(BackendUnavailable):
        cache.lookup("b")


def test_set_max_age_without_stale_if_error_fails_closed() -> None:
    cache, backend, clock, _ = make(rec("a"), ttl=600)
    cache.lookup("a")
    clock.advance(10)
    cache.set_max_age(5)
    backend.error = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        cache.lookup("a")


# ---------------------------------------------------------------- misc


def test_cache_is_collectable_despite_fork_hook() -> None:
    cache = MemoryCache(MemoryBackend())
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None


def test_after_fork_hook_resets_lock_and_flights() -> None:
    cache, _, _, _ = make()
    cache._lock.acquire()  # as if another thread held it at fork time
    from sessionmw import _fork

    # Registered with the library's one fork hook, which calls this in the child.
    # (Not _fork._after_fork_in_child(): it would reset every live object here.)
    assert cache in _fork._LIVE
    cache._reset_after_fork()
    assert cache._lock.acquire(blocking=False)
    cache._lock.release()
    assert cache._flights == {}


def test_record_with_other_session_id_is_keyed_by_requested_id() -> None:
    cache, backend, _, _ = make()
    backend.records["alias"] = rec("canonical")
    assert cache.lookup("alias") == rec("canonical")
    assert cache.peek("alias") == rec("canonical")
    assert cache.peek("canonical") is MISS


def test_repr_does_not_leak_ids() -> None:
    cache, _, _, _ = make(rec("secret"))
    cache.lookup("secret")
    assert "secret" not in repr(cache)
