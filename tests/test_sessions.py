"""``sessionmw.Sessions``, the app side of the session lifecycle (SPEC section 11), on
every store sessionmw writes to: an in-process dict (``memory://``), a SQLite file,
PostgreSQL and Redis (real services, as in ``test_stores_lifecycle``).

Each case runs once through the sync methods and once through their async twins
(``acreate``, ``aget``, ``alist``, ``arevoke``, ``arevoke_user``). Besides the store,
the cases check what the gate's cache does at once: a revocation made here is
applied to this process's cache before the call returns, and published on the bus
(a real Redis stream) for the other processes.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sessionmw import BusUnavailable, ReadOnlyStore, Settings
from sessionmw.answers import Answer
from sessionmw.backends import MemoryBackend
from sessionmw.backends.sql import SQLBackend
from sessionmw.gate import Gate, forget_gates, gate_for
from sessionmw.records import SessionRecord, SessionStatus, StoredSession
from sessionmw.sessions import Sessions
from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("fresh_gates")

STORES = ["memory", "sqlite", "postgres", "redis"]
#: SPEC section 7: what a session ID header may hold.
ID_FORMAT = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}")
LIFETIME = 3600.0
#: How long a cross-process (bus) revocation may take here, at most.
DEADLINE = 5.0


# -- fixtures ----------------------------------------------------------------------


class Env:
    """One store under test: its URL, and the Sessions built on it (closed after)."""

    def __init__(self, name: str, url: str, redis_url: str | None) -> None:
        self.name = name
        self.url = url
        self.redis_url = redis_url
        self.built: list[Sessions] = []
        self.gates: list[Gate] = []

    def sessions(self, **keywords: Any) -> Sessions:
        """``Sessions`` on this store (``session_lifetime`` one hour), schema made."""
        keywords.setdefault("backend", self.url)
        keywords.setdefault("session_lifetime", LIFETIME)
        made = Sessions(**keywords)
        made.create_schema()
        self.built.append(made)
        return made

    def gate(self, settings: Settings) -> Gate:
        """A gate of its own (own cache, own bus subscriber), stopped after the test."""
        gate = Gate(settings)
        self.gates.append(gate)
        return gate

    def close(self) -> None:
        for gate in self.gates:
            gate.stop()
        forget_gates()  # stop the shared gates (their last flush) before the drop
        backends = {id(s.gate.backend): s.gate.backend for s in self.built}
        backends.update({id(g.backend): g.backend for g in self.gates})
        for backend in backends.values():
            close = getattr(backend, "close", None)
            if close is not None:
                close()


@pytest.fixture(params=STORES)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    name = request.param
    redis_url: str | None = None
    if name == "memory":
        url = "memory://"
    elif name == "sqlite":
        url = f"sqlite:///{tmp_path / 'sessions.db'}"
    elif name == "postgres":
        url = f"{request.getfixturevalue('postgres_url')}?table=s_{uuid.uuid4().hex[:16]}"
    else:
        request.getfixturevalue("redis_client")  # database flushed around the test
        url = redis_url = request.getfixturevalue("redis_url")
    made = Env(name, url, redis_url)
    yield made
    made.close()
    if name == "postgres":
        dropper = SQLBackend(url)
        dropper.drop_schema()
        dropper.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Api:
    """Every Sessions method, called sync or through its async twin."""

    def __init__(self, sessions: Sessions, mode: str) -> None:
        self.s = sessions
        self.sync = mode == "sync"

    async def create(self, user_id: str, **keywords: Any) -> StoredSession:
        if self.sync:
            return self.s.create(user_id, **keywords)
        return await self.s.acreate(user_id, **keywords)

    async def get(self, session_id: str) -> StoredSession | None:
        return self.s.get(session_id) if self.sync else await self.s.aget(session_id)

    async def list(self, user_id: str) -> list[StoredSession]:
        return self.s.list(user_id) if self.sync else await self.s.alist(user_id)

    async def revoke(self, session_id: str) -> bool:
        return self.s.revoke(session_id) if self.sync else await self.s.arevoke(session_id)

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        if self.sync:
            return self.s.revoke_user(user_id, keep=keep)
        return await self.s.arevoke_user(user_id, keep=keep)

    async def revoke_idp_sid(self, idp_sid: str) -> int:
        if self.sync:
            return self.s.revoke_idp_sid(idp_sid)
        return await self.s.arevoke_idp_sid(idp_sid)


def ids(sessions: list[StoredSession]) -> list[str]:
    return [s.session_id for s in sessions]


def allowed(gate: Gate, session_id: str) -> bool:
    """Whether the gate lets a request with this session through (401 otherwise)."""
    outcome = gate.check(session_id)
    if isinstance(outcome, Answer):
        assert (outcome.status, outcome.code) == (401, "invalid_session"), outcome
        return False
    assert isinstance(outcome, SessionRecord)
    assert outcome.session_id == session_id
    return True


def warm(gate: Gate, *session_ids: str) -> None:
    """Cache the sessions as active (the state a revocation must overturn)."""
    for session_id in session_ids:
        assert allowed(gate, session_id)
        assert gate.cache.hit(session_id) is not None, "cached as active"


def wait_for(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


# -- create and get ----------------------------------------------------------------


async def test_create_writes_an_active_session(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    before = time.time()
    made = await api.create("alice")
    after = time.time()
    assert ID_FORMAT.fullmatch(made.session_id), made.session_id
    assert len(made.session_id) >= 43  # token_urlsafe(32): 256 bits
    assert made.user_id == "alice"
    assert made.status is SessionStatus.ACTIVE
    assert made.issued_at is not None
    assert before <= made.issued_at <= after
    assert made.last_seen == made.issued_at
    assert made.expires_at == pytest.approx(made.issued_at + LIFETIME)
    assert made.data == {}
    assert made.idp_sid is None
    assert await api.get(made.session_id) == made
    assert allowed(api.s.gate, made.session_id)


async def test_create_ids_are_unique(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    made = {(await api.create("alice")).session_id for _ in range(10)}
    assert len(made) == 10


async def test_create_lifetime_data_and_idp_sid(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    forever = await api.create("alice", lifetime=0)
    assert forever.expires_at is None
    short = await api.create("alice", lifetime=120)
    assert short.issued_at is not None
    assert short.expires_at == pytest.approx(short.issued_at + 120)
    data = {"role": "admin", "n": [1, 2], "nested": {"ok": True}, "name": "Zoë"}
    rich = await api.create("bob", data=data, idp_sid="idp-session-1")
    for made in (forever, short, rich):
        assert await api.get(made.session_id) == made
    got = await api.get(rich.session_id)
    assert got is not None
    assert got.data == data
    assert got.idp_sid == "idp-session-1"
    assert allowed(api.s.gate, forever.session_id)


async def test_create_refuses_an_empty_user(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    with pytest.raises(ValueError, match="user_id"):
        await api.create("")


async def test_get_unknown_is_none(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    await api.create("alice")
    assert await api.get("no-such-session") is None


async def test_get_reads_the_store_not_the_cache(env: Env, mode: str) -> None:
    """``get`` answers what the store holds now, even for a session the cache holds."""
    api = Api(env.sessions(), mode)
    made = await api.create("alice")
    warm(api.s.gate, made.session_id)
    assert api.s.store.revoke(made.session_id)  # behind the gate's back
    got = await api.get(made.session_id)
    assert got is not None
    assert got.status is SessionStatus.REVOKED


# -- list --------------------------------------------------------------------------


async def test_list_newest_first_without_revoked_or_expired(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    first = await api.create("alice")
    second = await api.create("alice")
    third = await api.create("alice")
    gone = await api.create("alice")
    await api.create("bob")
    now = time.time()
    expired = StoredSession(
        "expired-session", "alice", SessionStatus.ACTIVE, now - 1, now - 10, last_seen=now - 5
    )
    api.s.store.create(expired)
    assert await api.revoke(gone.session_id)
    listed = await api.list("alice")
    assert ids(listed) == [third.session_id, second.session_id, first.session_id]
    assert listed[0] == third
    assert await api.list("nobody") == []


# -- revoke ------------------------------------------------------------------------


async def test_revoke_is_true_then_false_and_refused_at_once(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    made = await api.create("alice")
    other = await api.create("alice")
    gate = api.s.gate
    warm(gate, made.session_id, other.session_id)
    assert await api.revoke(made.session_id) is True
    # No TTL, no re-fetch: the event was applied to this process's cache.
    assert gate.cache.hit(made.session_id) is None
    assert not allowed(gate, made.session_id)
    assert allowed(gate, other.session_id)
    got = await api.get(made.session_id)
    assert got is not None
    assert got.status is SessionStatus.REVOKED
    assert await api.revoke(made.session_id) is False  # idempotent
    assert await api.revoke("no-such-session") is False
    assert not allowed(gate, made.session_id)
    assert ids(await api.list("alice")) == [other.session_id]


async def test_revoke_user_keep(env: Env, mode: str) -> None:
    """ "Log out everywhere else": the kept session stays valid, the others are
    refused in this process at once; another user is untouched."""
    api = Api(env.sessions(), mode)
    here, phone, laptop = [await api.create("alice") for _ in range(3)]
    bobs = await api.create("bob")
    gate = api.s.gate
    warm(gate, here.session_id, phone.session_id, laptop.session_id, bobs.session_id)
    assert await api.revoke_user("alice", keep=here.session_id) == 2
    assert allowed(gate, here.session_id)
    assert not allowed(gate, phone.session_id)
    assert not allowed(gate, laptop.session_id)
    assert allowed(gate, bobs.session_id)
    assert ids(await api.list("alice")) == [here.session_id]
    assert await api.revoke_user("alice", keep=here.session_id) == 0


async def test_revoke_user_all(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    made = [await api.create("alice") for _ in range(3)]
    bobs = await api.create("bob")
    gate = api.s.gate
    warm(gate, *(s.session_id for s in made), bobs.session_id)
    assert await api.revoke_user("alice") == 3
    for session in made:
        assert not allowed(gate, session.session_id)
        got = await api.get(session.session_id)
        assert got is not None
        assert got.status is SessionStatus.REVOKED
    assert allowed(gate, bobs.session_id)
    assert await api.list("alice") == []
    assert await api.revoke_user("alice") == 0
    # A login after "log out everywhere" is not caught by the user-wide event.
    later = await api.create("alice")
    assert allowed(gate, later.session_id)
    assert ids(await api.list("alice")) == [later.session_id]


async def test_revoke_idp_sid(env: Env, mode: str) -> None:
    api = Api(env.sessions(), mode)
    one = await api.create("alice", idp_sid="idp-1")
    two = await api.create("alice", idp_sid="idp-1")
    other = await api.create("alice", idp_sid="idp-2")
    gate = api.s.gate
    warm(gate, one.session_id, two.session_id, other.session_id)
    assert await api.revoke_idp_sid("idp-1") == 2
    assert not allowed(gate, one.session_id)
    assert not allowed(gate, two.session_id)
    assert allowed(gate, other.session_id)
    assert await api.revoke_idp_sid("idp-1") == 0


# -- max_sessions_per_user ---------------------------------------------------------


async def test_max_sessions_per_user_revokes_the_oldest(env: Env, mode: str) -> None:
    api = Api(env.sessions(max_sessions_per_user=2), mode)
    gate = api.s.gate
    first = await api.create("alice")
    second = await api.create("alice")
    warm(gate, first.session_id, second.session_id)
    bobs = await api.create("bob")
    third = await api.create("alice")
    assert ids(await api.list("alice")) == [third.session_id, second.session_id]
    got = await api.get(first.session_id)
    assert got is not None
    assert got.status is SessionStatus.REVOKED
    assert not allowed(gate, first.session_id)  # cached as active before: refused now
    assert allowed(gate, second.session_id)
    assert allowed(gate, third.session_id)
    assert ids(await api.list("bob")) == [bobs.session_id]
    fourth = await api.create("alice")
    assert ids(await api.list("alice")) == [fourth.session_id, third.session_id]
    assert not allowed(gate, second.session_id)


# -- one gate per settings -----------------------------------------------------------


def test_equal_settings_share_the_gate(env: Env) -> None:
    settings = Settings(backend=env.url, session_lifetime=LIFETIME)
    sessions = Sessions(settings)
    env.built.append(sessions)
    assert sessions.gate is gate_for(settings)
    assert sessions.settings is sessions.gate.settings
    assert Sessions(Settings(backend=env.url, session_lifetime=LIFETIME)).gate is sessions.gate
    assert Sessions(backend=env.url, session_lifetime=LIFETIME).gate is sessions.gate
    as_mapping = {"backend": env.url, "session_lifetime": LIFETIME}
    assert Sessions(as_mapping).gate is sessions.gate
    assert Sessions(sessions.gate).gate is sessions.gate
    assert Sessions(backend=env.url, session_lifetime=60).gate is not sessions.gate
    # So a session created through one is refused, after a revoke through another,
    # by the cache of the first.
    sessions.create_schema()
    made = sessions.create("alice")
    warm(sessions.gate, made.session_id)
    assert Sessions(backend=env.url, session_lifetime=LIFETIME).revoke(made.session_id)
    assert not allowed(sessions.gate, made.session_id)


# -- an auth service's store is read-only --------------------------------------------


async def test_http_store_is_read_only(mode: str) -> None:
    port = free_port()  # nothing listens: no write may even try to reach it
    api = Api(Sessions(backend=f"http://127.0.0.1:{port}/sessions/{{session_id}}"), mode)
    writes: list[Callable[[], Any]] = [
        lambda: api.create("alice"),
        lambda: api.revoke("s-1"),
        lambda: api.revoke_user("alice"),
        lambda: api.revoke_user("alice", keep="s-1"),
        lambda: api.revoke_idp_sid("idp-1"),
    ]
    for write in writes:
        with pytest.raises(ReadOnlyStore) as info:
            await write()
        message = str(info.value)
        assert "auth service" in message
        assert "revoke" in message.lower()
        assert "hook" in message
        assert "bus" in message
    with pytest.raises(ReadOnlyStore):
        api.s.create_schema()
    assert api.s.gate.events_applied == {}, "nothing applied for a refused write"


# -- the bus -------------------------------------------------------------------------


def stream_events(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def test_bus_down_raises_and_the_store_write_stands(env: Env, mode: str) -> None:
    """Publishing fails: ``BusUnavailable``, the store row is revoked anyway and this
    process's cache refuses it; calling again once the bus is back publishes."""
    redis_url = env.redis_url or "redis://127.0.0.1:6379/15"
    if env.redis_url is None:
        from tests.conftest import require_service

        require_service("redis", redis_url, 6379)
    client = redis.Redis.from_url(redis_url)
    stream = f"sessionmw:test:{uuid.uuid4().hex}"
    try:
        closed = f"redis://127.0.0.1:{free_port()}/0"
        api = Api(env.sessions(bus=closed, backend_timeout=0.3), mode)
        made = await api.create("alice")
        kept = await api.create("alice")
        warm(api.s.gate, made.session_id, kept.session_id)
        started = time.monotonic()
        with pytest.raises(BusUnavailable):
            await api.revoke(made.session_id)
        assert time.monotonic() - started < 3, "bounded by backend_timeout"
        got = await api.get(made.session_id)
        assert got is not None
        assert got.status is SessionStatus.REVOKED, "the store write stands"
        assert not allowed(api.s.gate, made.session_id), "applied here before publishing"
        assert allowed(api.s.gate, kept.session_id)
        third = await api.create("alice")
        with pytest.raises(BusUnavailable):
            await api.revoke_user("alice", keep=kept.session_id)
        assert ids(await api.list("alice")) == [kept.session_id]
        assert not allowed(api.s.gate, third.session_id)

        # The bus is back (here: the same store, a gate whose bus answers). Again.
        again = Api(env.sessions(backend=api.s.gate.backend, bus=redis_url, stream=stream), mode)
        assert await again.revoke(made.session_id) is False  # already revoked in the store
        entries = stream_events(client, stream)
        assert [(e["type"], e["session_id"]) for e in entries] == [
            ("session_revoked", made.session_id)
        ]
        assert allowed(again.s.gate, kept.session_id)
        assert not allowed(again.s.gate, made.session_id)
    finally:
        client.delete(stream)
        client.close()


async def test_revoke_reaches_another_gate_through_redis(env: Env, mode: str) -> None:
    """Another process's gate (here: another Gate, own cache, own subscriber, same
    settings) refuses the session once the event arrives, without a TTL."""
    redis_url = env.redis_url or "redis://127.0.0.1:6379/15"
    if env.redis_url is None:
        from tests.conftest import require_service

        require_service("redis", redis_url, 6379)
    stream = f"sessionmw:test:{uuid.uuid4().hex}"
    api = Api(env.sessions(bus=redis_url, stream=stream), mode)
    here = api.s.gate
    # memory:// builds one dict per gate: the other gate gets this one's store.
    backend = here.backend if env.name == "memory" else env.url
    settings = Settings(backend=backend, bus=redis_url, stream=stream, session_lifetime=LIFETIME)
    there = env.gate(settings)
    assert there is not here
    assert there.cache is not here.cache
    here.start()
    there.start()
    assert wait_for(lambda: here.bus.connected and there.bus.connected)
    made = await api.create("alice")
    kept = await api.create("alice")
    others = [await api.create("alice") for _ in range(2)]
    warm(there, made.session_id, kept.session_id, *(s.session_id for s in others))

    assert await api.revoke(made.session_id)
    assert not allowed(here, made.session_id)
    assert wait_for(lambda: there.cache.hit(made.session_id) is None), "event not applied"
    assert not allowed(there, made.session_id)
    assert allowed(there, kept.session_id)

    assert await api.revoke_user("alice", keep=kept.session_id) == 2
    for other in others:
        assert wait_for(lambda sid=other.session_id: there.cache.hit(sid) is None)  # type: ignore[misc]
        assert not allowed(there, other.session_id)
    assert allowed(there, kept.session_id)
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(stream)
    finally:
        client.close()


def test_memory_store_object_shared() -> None:
    """A store given as an object (not a URL) is used as is: the session written
    through ``Sessions`` is the one the middleware's store answers for."""
    store = MemoryBackend()
    sessions = Sessions(backend=store)
    made = sessions.create("alice")
    assert store.get(made.session_id) == made
    assert allowed(sessions.gate, made.session_id)
    assert sessions.revoke(made.session_id)
    assert not allowed(sessions.gate, made.session_id)
