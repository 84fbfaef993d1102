"""MemoryCache against a reference model, driven by random operation sequences.

The model is a plain dict plus the exact semantics of SPEC section 5 written the
obvious way: a CLOCK (second-chance) queue for eviction, TTLs from an explicit
clock, tombstones and user watermarks in insertion-ordered dicts. Because the model
replays the same eviction policy, every answer, every backend call, ``len`` and the
eviction count are compared exactly; on top of that, properties that must hold
whatever the policy (bound, revoked never served as active) are checked directly.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, replace

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sessionmw.cache import MISS, MemoryCache, Miss
from sessionmw.errors import BackendUnavailable
from sessionmw.records import SessionRecord, SessionStatus

ACTIVE = SessionStatus.ACTIVE
REVOKED = SessionStatus.REVOKED
WALL0 = 1_767_225_600.0
TTL = 60.0

# Small domains on purpose: collisions (same ID, same user, issue time equal to a
# revocation's `before`, a lookup landing exactly on a deadline) are where bugs hide.
IDS = st.sampled_from(["s0", "s1", "s2", ""])
USERS = st.sampled_from(["alice", "bob"])
# The wall clock is WALL0 + the monotonic clock, so `before` defaults land on these.
ISSUED = st.sampled_from([None, WALL0 - 100.0, WALL0, WALL0 + 10.0, WALL0 + 60.0])
STEPS = st.sampled_from([0.5, 1.0, 5.0, 10.0, 30.0, 59.5, 60.0, 95.0])


class ModelBackend:
    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}
        self.down = False
        self.calls = 0

    def lookup(self, session_id: str) -> SessionRecord | None:
        self.calls += 1
        if self.down:
            raise BackendUnavailable("down")
        return self.records.get(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)


@dataclass
class ModelEntry:
    record: SessionRecord | None
    fetched: float
    ref: bool = False


Answer = SessionRecord | None | BackendUnavailable


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.backend = ModelBackend()
        self.loop = asyncio.new_event_loop()
        # The model.
        self.entries: dict[str, ModelEntry] = {}
        self.queue: list[str] = []  # CLOCK order, oldest first
        self.tombstones: OrderedDict[str, float] = OrderedDict()
        self.watermarks: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.expected_calls = 0
        self.evictions = 0
        self.max_age: float | None = None

    @initialize(
        max_entries=st.sampled_from([1, 2, 2, 3, 3, 5]),
        negative_ttl=st.sampled_from([0.0, 5.0]),
        stale_if_error=st.sampled_from([0.0, 30.0]),
    )
    def configure(self, max_entries: int, negative_ttl: float, stale_if_error: float) -> None:
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self.stale_if_error = stale_if_error
        self.cache = MemoryCache(
            self.backend,
            max_entries=max_entries,
            ttl=TTL,
            negative_ttl=negative_ttl,
            stale_if_error=stale_if_error,
            clock=lambda: self.now,
            wall_clock=lambda: WALL0 + self.now,
        )

    def teardown(self) -> None:
        self.loop.close()

    # ------------------------------------------------------------ model helpers

    def window(self, record: SessionRecord | None) -> float:
        base = TTL if record is not None else self.negative_ttl
        return base if self.max_age is None else min(base, self.max_age)

    def fresh(self, session_id: str) -> ModelEntry | None:
        entry = self.entries.get(session_id)
        if entry is not None and self.now - entry.fetched < self.window(entry.record):
            return entry
        return None

    def revoke_fetched(self, session_id: str, record: SessionRecord) -> SessionRecord:
        if record.status is not ACTIVE:
            return record
        deadline = self.tombstones.get(session_id)
        if deadline is not None and deadline > self.now:
            return replace(record, status=REVOKED)
        mark = self.watermarks.get(record.user_id)
        if (
            mark is not None
            and mark[1] > self.now
            and record.issued_at is not None
            and record.issued_at <= mark[0]
        ):
            return replace(record, status=REVOKED)
        return record

    def evict_one(self) -> None:
        while True:
            key = self.queue.pop(0)
            entry = self.entries[key]
            if entry.ref:
                entry.ref = False
                self.queue.append(key)
                continue
            del self.entries[key]
            self.evictions += 1
            return

    def remove(self, session_id: str) -> None:
        if self.entries.pop(session_id, None) is not None:
            self.queue.remove(session_id)

    def model_lookup(self, session_id: str) -> Answer:
        if not session_id:
            return None
        entry = self.fresh(session_id)
        if entry is not None:
            entry.ref = True
            return entry.record
        self.expected_calls += 1
        if self.backend.down:
            old = self.entries.get(session_id)
            if (
                self.stale_if_error > 0
                and old is not None
                and old.record is not None
                and old.record.status is ACTIVE
                and self.now - old.fetched < TTL + self.stale_if_error
            ):
                return old.record
            return BackendUnavailable("down")
        record = self.backend.records.get(session_id)
        if record is not None:
            record = self.revoke_fetched(session_id, record)
        if record is None and self.negative_ttl <= 0:
            self.remove(session_id)
            return None
        existing = self.entries.get(session_id)
        if existing is not None:
            existing.record, existing.fetched, existing.ref = record, self.now, True
        else:
            while len(self.entries) >= self.max_entries:
                self.evict_one()
            self.entries[session_id] = ModelEntry(record, self.now)
            self.queue.append(session_id)
        return record

    def remember(self, table: OrderedDict[str, object], key: str, value: object) -> None:
        for name in list(table):  # purge expired marks (they are in deadline order)
            deadline = table[name]
            if isinstance(deadline, tuple):
                deadline = deadline[1]
            assert isinstance(deadline, float)
            if deadline > self.now:
                break
            del table[name]
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def check_answer(self, expected: Answer, actual: Answer) -> None:
        if isinstance(expected, BackendUnavailable):
            assert isinstance(actual, BackendUnavailable), actual
        else:
            assert actual == expected, (actual, expected)
        if isinstance(actual, SessionRecord):
            # Whatever the model says, a tombstoned session is never served active.
            deadline = self.tombstones.get(actual.session_id)
            if deadline is not None and deadline > self.now:
                assert actual.status is REVOKED

    # ------------------------------------------------------------ rules: reads

    @rule(
        calls=st.lists(
            st.tuples(IDS, st.booleans(), st.sampled_from([False, False, True])),
            min_size=1,
            max_size=3,
        )
    )
    def lookup(self, calls: list[tuple[str, bool, bool]]) -> None:
        """A few lookups in a row: (ID, through alookup?, backend down?)."""
        for session_id, use_async, down in calls:
            self.backend.down = down
            expected = self.model_lookup(session_id)
            actual: Answer
            try:
                if use_async:
                    actual = self.loop.run_until_complete(self.cache.alookup(session_id))
                else:
                    actual = self.cache.lookup(session_id)
            except BackendUnavailable as exc:
                actual = exc
            self.check_answer(expected, actual)

    @rule(session_id=IDS)
    def hit(self, session_id: str) -> None:
        """The fast path: only a fresh, active record (this model's have no expiry)."""
        entry = self.fresh(session_id)
        expected: SessionRecord | None = None
        if entry is not None and entry.record is not None and entry.record.status is ACTIVE:
            entry.ref = True
            expected = entry.record
        actual = self.cache.hit(session_id)
        assert actual == expected, (actual, expected)
        if actual is not None:
            self.check_answer(expected, actual)

    @rule(session_id=IDS)
    def peek(self, session_id: str) -> None:
        entry = self.fresh(session_id)
        expected: SessionRecord | Miss | None = MISS
        if entry is not None:
            entry.ref = True
            expected = entry.record
        actual = self.cache.peek(session_id)
        if expected is MISS:
            assert actual is MISS
        else:
            assert actual == expected

    # ------------------------------------------------------------ rules: invalidation

    @rule(session_id=IDS)
    def mark_revoked(self, session_id: str) -> None:
        self.cache.mark_revoked(session_id)
        if not session_id:
            return
        self.remember(self.tombstones, session_id, self.now + TTL)  # type: ignore[arg-type]
        entry = self.entries.get(session_id)
        if entry is not None and entry.record is not None and entry.record.status is ACTIVE:
            entry.record = replace(entry.record, status=REVOKED)

    @rule(user_id=USERS, before=st.one_of(st.none(), ISSUED.filter(lambda x: x is not None)))
    def mark_user_revoked(self, user_id: str, before: float | None) -> None:
        self.cache.mark_user_revoked(user_id, before)
        if before is None or before > WALL0 + self.now:
            before = WALL0 + self.now  # never later than now
        previous = self.watermarks.get(user_id)
        if previous is not None and previous[1] > self.now:
            before = max(before, previous[0])
        self.remember(self.watermarks, user_id, (before, self.now + TTL))  # type: ignore[arg-type]
        for entry in self.entries.values():
            record = entry.record
            if (
                record is not None
                and record.user_id == user_id
                and record.status is ACTIVE
                and (record.issued_at is None or record.issued_at <= before)
            ):
                entry.record = replace(record, status=REVOKED)

    @rule(session_id=IDS)
    def invalidate(self, session_id: str) -> None:
        self.cache.invalidate(session_id)
        self.remove(session_id)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.entries.clear()
        self.queue.clear()

    @rule(seconds=st.sampled_from([None, 0.0, 2.0, 20.0]))
    def set_max_age(self, seconds: float | None) -> None:
        self.cache.set_max_age(seconds)
        self.max_age = seconds

    # ------------------------------------------------------------ rules: world

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.now += step

    @rule(
        session_id=IDS.filter(bool),
        user_id=USERS,
        status=st.sampled_from([ACTIVE, ACTIVE, REVOKED, None]),
        issued_at=ISSUED,
    )
    def backend_put(
        self, session_id: str, user_id: str, status: SessionStatus | None, issued_at: float | None
    ) -> None:
        """Change what the backend says about an ID (status None: it forgets it)."""
        if status is None:
            self.backend.records.pop(session_id, None)
        else:
            self.backend.records[session_id] = SessionRecord(
                session_id, user_id, status, issued_at=issued_at
            )

    # ------------------------------------------------------------ invariants

    @invariant()
    def bounded_and_in_step(self) -> None:
        if not hasattr(self, "cache"):
            return
        assert len(self.cache) <= self.max_entries
        assert len(self.cache) == len(self.entries)
        assert self.backend.calls == self.expected_calls
        assert self.cache.stats()["evictions"] == self.evictions

    @invariant()
    def user_index_matches_entries(self) -> None:
        if not hasattr(self, "cache"):
            return
        indexed: dict[str, set[str]] = {}
        for user_id, value in self.cache._users.items():
            indexed[user_id] = {value} if isinstance(value, str) else set(value)
        expected: dict[str, set[str]] = {}
        for key, entry in self.cache._data.items():
            if entry.record is not None:
                expected.setdefault(entry.record.user_id, set()).add(key)
        assert indexed == expected


CacheMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCacheModel = CacheMachine.TestCase
