"""``redis+cluster://`` (SPEC section 12) on a real Redis Cluster of three masters and
three replicas, started by the test from Debian's ``redis-server`` (tests/engines.py):
the store with sessions spread over the masters, the bus, the replay guard, and the
loss of the master holding the stream while requests keep coming."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from sessionmw import BackendUnavailable, BusUnavailable, Sessions, SessionStatus, StoredSession
from sessionmw._log import hash_id
from sessionmw.answers import Answer
from sessionmw.backends.redis import RedisBackend, session_key, user_key
from sessionmw.bus import publish
from sessionmw.bus.redis import RedisBus
from sessionmw.events import SessionRevoked
from sessionmw.gate import Gate
from sessionmw.settings import Settings
from tests import engines
from tests.conftest import free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

DEADLINE = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[engines.ClusterEngine]:
    engines.require("a Redis Cluster")
    with engines.cluster() as engine:
        yield engine


@pytest.fixture
def store(cluster: engines.ClusterEngine) -> Iterator[RedisBackend]:
    backend = RedisBackend(cluster.url, timeout=2)
    yield backend
    backend.close()


def _session(user: str, *, idp_sid: str | None = None, issued: float = 0.0) -> StoredSession:
    now = time.time()
    return StoredSession(
        f"s-{uuid.uuid4().hex}",
        user,
        SessionStatus.ACTIVE,
        expires_at=now + 3600,
        issued_at=issued or now,
        last_seen=now,
        idp_sid=idp_sid,
    )


def test_sessions_spread_over_masters_and_every_lookup_finds_them(
    cluster: engines.ClusterEngine, store: RedisBackend
) -> None:
    """Thirty sessions of one user land on all three masters; each is found (sync and
    async); the user's list has them all, newest first, without a SCAN; revoke_user
    keeps one and revokes the rest on every master; a taken ID is refused."""
    user = f"u-{uuid.uuid4().hex}"
    made = [
        _session(user, issued=1000.0 + n, idp_sid="idp-1" if n < 3 else None) for n in range(30)
    ]
    for session in made:
        store.create(session)
    masters = {cluster.master_of(session_key(s.session_id)) for s in made}
    assert masters == cluster.masters()  # all three masters hold some
    assert store.cluster

    for session in made:
        found = store.lookup(session.session_id)
        assert found is not None
        assert found.user_id == user

    async def alookup(session_id: str) -> object:
        try:
            return await store.alookup(session_id)
        finally:
            await store.aclose()  # this loop's client goes with the loop

    assert asyncio.run(alookup(made[5].session_id)) is not None
    assert store.lookup("s-unknown") is None

    listed = store.list_user(user)
    assert [s.session_id for s in listed] == [s.session_id for s in reversed(made)]
    assert store.ids_for_idp_sid("idp-1") == sorted(s.session_id for s in made[:3])
    with pytest.raises(ValueError, match="already"):
        store.create(made[0])

    keep = made[4].session_id
    revoked = store.revoke_user(user, keep=keep)
    assert sorted(revoked) == sorted(s.session_id for s in made if s.session_id != keep)
    assert [s.session_id for s in store.list_user(user)] == [keep]
    assert store.revoke(keep) is True
    assert store.revoke(keep) is False
    assert store.list_user(user) == []


def test_touch_and_cleanup_run_per_key(cluster: engines.ClusterEngine, store: RedisBackend) -> None:
    """touch_many moves last_seen forward on sessions of every master (never back,
    never creating a hash); an ID whose hash is gone leaves the user's set."""
    user = f"u-{uuid.uuid4().hex}"
    made = [_session(user) for _ in range(6)]
    for session in made:
        store.create(session)
    later = time.time() + 100
    store.touch_many([(s.session_id, later) for s in made] + [("s-ghost", later)])
    store.touch_many([(made[0].session_id, later - 50)])
    for session in made:
        stored = store.get(session.session_id)
        assert stored is not None
        assert stored.last_seen == pytest.approx(later)
    assert store.get("s-ghost") is None

    store.delete(made[1].session_id)
    assert len(store.list_user(user)) == 5
    raw = redis.RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[0]}")
    try:
        assert made[1].session_id.encode() not in raw.smembers(user_key(user))
    finally:
        raw.close()


def test_migration_scans_every_master(cluster: engines.ClusterEngine, store: RedisBackend) -> None:
    """Hashes written without their sets (an older layout), on several masters:
    schema_missing reports the backfill, create_schema adds every one of them to its
    user's set (SCAN over every master) and records the marker; then nothing is
    missing."""
    raw = redis.RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[1]}")
    user = f"legacy-{uuid.uuid4().hex}"
    ids = [f"old-{uuid.uuid4().hex}" for _ in range(9)]
    try:
        raw.delete("sessionmw:schema")
        for sid in ids:
            raw.hset(session_key(sid), mapping={"user_id": user, "status": "active"})
        assert len({cluster.master_of(session_key(sid)) for sid in ids}) > 1
        assert store.schema_missing()
        done = store.create_schema()
        assert any("user's set" in line for line in done), done
        assert sorted(s.session_id for s in store.list_user(user)) == sorted(ids)
        assert store.schema_missing() == []
        assert any(r.user_id == user for r in store.list_sessions(user_id=user, limit=20))
    finally:
        raw.close()


def test_bus_and_replay_guard_on_a_cluster(cluster: engines.ClusterEngine) -> None:
    """An event published on the cluster reaches a subscribed gate; the replay keys
    share the stream's slot, and a webhook ID claimed by one bus is a duplicate for
    another."""
    stream = f"sessionmw:test:{uuid.uuid4().hex}"
    store = RedisBackend(cluster.url)
    session = _session("u-bus")
    store.create(session)
    gate = Gate(Settings(backend=store, bus=cluster.url, stream=stream))
    other = RedisBus(cluster.url, stream=stream)
    try:
        gate.start()
        engines.wait_until(lambda: gate.bus.connected, DEADLINE, "the subscriber")
        assert not isinstance(gate.check(session.session_id), Answer)
        publish(cluster.url, [SessionRevoked(session.session_id)], stream=stream)
        engines.wait_until(
            lambda: isinstance(gate.check(session.session_id), Answer), DEADLINE, "the event"
        )
        guard = gate.bus.replay_guard
        assert isinstance(guard, type(other.replay_guard))
        assert key_slot(other.replay_guard.key("msg-1").encode()) == key_slot(stream.encode())
        assert guard.claim("msg-1") is True
        assert other.replay_guard.claim("msg-1") is False
    finally:
        gate.stop()
        other.stop()
        store.close()


def test_master_of_the_stream_killed_under_load(cluster: engines.ClusterEngine) -> None:
    """Two gates (two workers) on the cluster store and bus, requests for cached valid
    sessions from four threads; the master holding the stream is killed (SIGKILL):
    no request gets a 5xx during the outage (``stale_if_error`` covers sessions whose
    hash was on that master), and once a replica took over, a revocation published
    on the bus reaches both gates."""
    stream = f"sessionmw:test:{uuid.uuid4().hex}"
    store = RedisBackend(cluster.url, timeout=1)
    sessions = [_session(f"u-load-{n}") for n in range(30)]
    for session in sessions:
        store.create(session)
    assert len({cluster.master_of(session_key(s.session_id)) for s in sessions}) == 3
    settings = Settings(
        backend=cluster.url, bus=cluster.url, stream=stream, stale_if_error=60, backend_timeout=1
    )
    gates = [Gate(settings), Gate(settings)]
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    victim = sessions[0].session_id
    others_refused: Counter[str] = Counter()

    def load(n: int) -> None:
        while not stop.is_set():
            for session in sessions:
                gate = gates[n % 2]
                outcome = gate.check(session.session_id)
                statuses[outcome.status if isinstance(outcome, Answer) else 200] += 1
                if isinstance(outcome, Answer) and session.session_id != victim:
                    others_refused[f"{outcome.code} {hash_id(session.session_id)}"] += 1

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    try:
        for gate in gates:
            gate.start()
        engines.wait_until(
            lambda: all(gate.bus.connected for gate in gates), DEADLINE, "the subscribers"
        )
        publish(cluster.url, [SessionRevoked("warm-up")], stream=stream)  # the stream exists
        for thread in threads:
            thread.start()
        engines.wait_until(
            lambda: all(g.cache.hit(s.session_id) for g in gates for s in sessions),
            DEADLINE,
            "every session cached by both gates",
        )

        # Replication is asynchronous: what the master had not yet sent to its
        # replica dies with it (docs/deployment.md). Wait, so the test is about the
        # failover, not about that loss.
        cluster.wait_replicated()
        dead = cluster.kill_master_of(stream)
        engines.wait_until(
            lambda: not all(g.bus.connected for g in gates), DEADLINE, "the bus to notice"
        )
        cluster.wait_promoted(stream, dead.port, 30)

        def published() -> bool:
            try:
                publish(cluster.url, [SessionRevoked(victim)], stream=stream, timeout=1)
            except BusUnavailable:
                return False
            return True

        engines.wait_until(published, DEADLINE, "the bus to take events again")
        engines.wait_until(
            lambda: all(isinstance(g.check(victim), Answer) for g in gates),
            DEADLINE,
            "the revocation to reach both gates",
        )
        refused = [g.check(victim) for g in gates]
        assert {a.status for a in refused if isinstance(a, Answer)} == {401}
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for gate in gates:
            gate.stop()
        store.close()
    served = dict(statuses)
    assert served.get(200, 0) > 1000, served
    assert not any(status >= 500 for status in served), served
    assert not others_refused, others_refused  # only the revoked session was refused


def test_replay_keys_share_the_stream_keys_slot() -> None:
    """The replay guard's key prefix hashes to the stream key's slot: ``{stream}`` as
    the tag for an untagged key; a key with a tag of its own keeps it (wrapping it
    again would hash ``{app`` instead)."""
    from sessionmw._redis_url import same_slot_prefix

    tagged = same_slot_prefix("{app}:events", ":webhook:")
    assert tagged == "{app}:events:webhook:"
    assert key_slot(f"{tagged}msg-1".encode()) == key_slot(b"{app}:events")
    plain = same_slot_prefix("sessionmw:invalidations", ":webhook:")
    assert plain == "{sessionmw:invalidations}:webhook:"
    assert key_slot(f"{plain}msg-1".encode()) == key_slot(b"sessionmw:invalidations")


def test_unreachable_cluster_is_unavailable_never_a_raw_cluster_error() -> None:
    """redis-py's cluster client raises ``RedisClusterException`` (not a
    ``RedisError``) when no node answers: the store still says
    ``BackendUnavailable``, the bus ``BusUnavailable``, and the CLI exits cleanly."""
    import subprocess
    import sys

    url = f"redis+cluster://127.0.0.1:{free_port()}"
    store = RedisBackend(url, timeout=0.5)
    with pytest.raises(BackendUnavailable):
        store.lookup("s1")
    with pytest.raises(BackendUnavailable):
        asyncio.run(store.alookup("s1"))
    with pytest.raises(BusUnavailable):
        publish(url, [SessionRevoked("s1")], stream="s", timeout=0.5)
    sessions = Sessions(backend="memory://", bus=url, backend_timeout=0.5)
    with pytest.raises(BusUnavailable):
        sessions.revoke("s1")
    done = subprocess.run(
        [sys.executable, "-m", "sessionmw.cli", "revoke", "--bus", url, "--session", "s1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
