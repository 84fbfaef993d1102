"""Tests added by a mutation-testing pass: each pins a behaviour that a plausible bug
(a "mutant") broke without any other test noticing.

The middlewares' inlined hit path is exercised with injected clocks: a gate built
around a :class:`MemoryCache` with settable monotonic and wall clocks is handed to the
middleware (``gate_for`` patched), and the gate's own wall clock (``_verdict``) is
patched to the same wall clock. No sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

import sessionmw.activity
import sessionmw.asgi
import sessionmw.gate
import sessionmw.wsgi
from sessionmw import ConfigError, SessionRecord, Settings
from sessionmw._body import declared_length
from sessionmw.asgi import InvalidationApp
from sessionmw.backends import MemoryBackend
from sessionmw.cache import MemoryCache
from sessionmw.errors import InvalidPayload
from sessionmw.events import (
    SessionRevoked,
    UserSessionsRevoked,
    from_fields,
    parse_batch,
    parse_event,
)
from sessionmw.gate import Gate, forget_gates, gate_for
from sessionmw.hook import secret_key
from sessionmw.records import SessionStatus
from sessionmw.signing import new_secret, sign
from sessionmw.wsgi import ENVIRON_KEY
from tests.test_activity import Clock as ActivityClock
from tests.test_activity import CountingStore, gate_with, stored
from tests.test_activity import make as make_flusher
from tests.test_asgi import Recorder
from tests.test_hook_core import NOW, SECRET, FakeBus, request
from tests.test_hook_core import make as make_hook
from tests.test_wsgi import Inner

if TYPE_CHECKING:
    pass

WALL = 1_767_225_600.0
MONO = 1000.0
TTL = 600.0
HEADER = b"x-device-session-id"
ACTIVE = SessionStatus.ACTIVE

Message = MutableMapping[str, Any]


# ------------------------------------------------------------------ clocked gates


class Clocks:
    """The cache's monotonic clock and the wall clock, moving together."""

    def __init__(self) -> None:
        self.mono = MONO
        self.wall = WALL

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class CountingBackend(MemoryBackend):
    """A memory store counting lookups."""

    def __init__(self, records: Iterable[SessionRecord] = ()) -> None:
        super().__init__(records)
        self.calls = 0

    def lookup(self, session_id: str) -> SessionRecord | None:
        self.calls += 1
        return super().lookup(session_id)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return self.lookup(session_id)


class Clocked:
    """A gate whose cache and verdicts run on :class:`Clocks` (``/healthz`` exempt); the
    middlewares built while it is patched in use it whatever their settings."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *records: SessionRecord) -> None:
        self.clocks = Clocks()
        self.backend = CountingBackend(records)
        cache = MemoryCache(
            self.backend,
            ttl=TTL,
            clock=self.clocks.monotonic,
            wall_clock=self.clocks.time,
        )
        # A long touch_interval: the activity thread (if any) never ticks in a test.
        settings = Settings(backend=self.backend, touch_interval=3600, exempt_paths=["/healthz"])
        self.gate = Gate(settings, cache=cache)
        self.cache = cache
        monkeypatch.setattr(
            sessionmw.gate,
            "time",
            SimpleNamespace(time=self.clocks.time, perf_counter=time.perf_counter),
        )
        monkeypatch.setattr(sessionmw.asgi, "gate_for", lambda settings: self.gate)
        monkeypatch.setattr(sessionmw.wsgi, "gate_for", lambda settings: self.gate)


Build = Callable[..., Clocked]


@pytest.fixture
def clocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[Build]:
    made: list[Clocked] = []

    def build(*records: SessionRecord) -> Clocked:
        made.append(Clocked(monkeypatch, *records))
        return made[-1]

    yield build
    for item in made:
        item.gate.stop()


def record(session_id: str, expires_at: float | None = None) -> SessionRecord:
    return SessionRecord(session_id, "u1", ACTIVE, expires_at, WALL - 60)


# -- ASGI --------------------------------------------------------------------------


async def asgi_status(app: Any, session_id: str) -> int:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/whoami",
        "headers": [(HEADER, session_id.encode())],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body is never read")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


def asgi_app(clocked: Build, *records: SessionRecord) -> tuple[Clocked, Any]:
    setup = clocked(*records)
    return setup, sessionmw.asgi.DeviceSessionMiddleware(Recorder(), backend=setup.backend)


async def test_asgi_session_expiring_while_cached_is_refused(clocked: Build) -> None:
    """The inlined hit judges expires_at (against the wall clock, not the monotonic one)."""
    setup, app = asgi_app(clocked, record("s", expires_at=WALL + 30))
    assert await asgi_status(app, "s") == 200
    setup.clocks.advance(29)
    assert await asgi_status(app, "s") == 200
    setup.clocks.advance(2)
    assert await asgi_status(app, "s") == 401


async def test_asgi_session_is_refused_at_the_exact_expiry_time(clocked: Build) -> None:
    """expires_at is exclusive: at expires_at itself the session is expired (SPEC 5)."""
    setup, app = asgi_app(clocked, record("s", expires_at=WALL + 30))
    assert await asgi_status(app, "s") == 200
    setup.clocks.advance(30)
    assert await asgi_status(app, "s") == 401


async def test_asgi_entry_is_refetched_once_its_ttl_has_passed(clocked: Build) -> None:
    """A revocation the cache never heard of shows once the TTL (exclusive) is over."""
    setup, app = asgi_app(clocked, record("s"))
    assert await asgi_status(app, "s") == 200
    setup.backend.set_status("s", SessionStatus.REVOKED)  # no event: only the TTL helps
    setup.clocks.advance(TTL - 1)
    assert await asgi_status(app, "s") == 200
    assert setup.backend.calls == 1
    setup.clocks.advance(1)  # exactly ttl after the fetch: stale
    assert await asgi_status(app, "s") == 401
    assert setup.backend.calls == 2


async def test_asgi_hit_path_records_activity(clocked: Build) -> None:
    setup, app = asgi_app(clocked, record("s"))
    assert setup.gate.activity is not None
    assert await asgi_status(app, "s") == 200
    setup.cache.take_activity()
    setup.clocks.advance(5)
    allowed = setup.cache.allowed_hits
    assert await asgi_status(app, "s") == 200
    assert setup.cache.allowed_hits == allowed + 1, "served by the hit path"
    assert setup.cache.take_activity() == {"s": WALL + 5}


async def test_asgi_hook_refuses_two_different_content_lengths() -> None:
    """A request with two Content-Length headers is malformed (400), not read by the first."""
    forget_gates()
    try:
        gate = gate_for(Settings(invalidation_secret=SECRET))
        app = InvalidationApp(gate)
        headers, body = request([{"type": "flush"}])
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw += [(b"content-length", str(len(body)).encode()), (b"content-length", b"70000")]
        scope = {"type": "http", "method": "POST", "path": "/hook", "headers": raw}
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 400
        assert json.loads(sent[1]["body"]) == {"error": "invalid_payload"}
    finally:
        forget_gates()


# -- WSGI --------------------------------------------------------------------------


def wsgi_status(app: Any, session_id: str, path: str = "/") -> int:
    environ = EnvironBuilder(path=path, method="GET").get_environ()
    environ["HTTP_X_DEVICE_SESSION_ID"] = session_id
    body, status, _ = run_wsgi_app(app, environ)
    assert isinstance(b"".join(body), bytes)
    return int(status.split()[0])


def wsgi_app(clocked: Build, *records: SessionRecord) -> tuple[Clocked, Any, Inner]:
    setup = clocked(*records)
    inner = Inner()
    return setup, sessionmw.wsgi.DeviceSessionMiddleware(inner, backend=setup.backend), inner


def test_wsgi_session_expiring_while_cached_is_refused(clocked: Build) -> None:
    setup, app, _ = wsgi_app(clocked, record("s", expires_at=WALL + 30))
    assert wsgi_status(app, "s") == 200
    setup.clocks.advance(29)
    assert wsgi_status(app, "s") == 200
    setup.clocks.advance(2)
    assert wsgi_status(app, "s") == 401


def test_wsgi_session_is_refused_at_the_exact_expiry_time(clocked: Build) -> None:
    setup, app, _ = wsgi_app(clocked, record("s", expires_at=WALL + 30))
    assert wsgi_status(app, "s") == 200
    setup.clocks.advance(30)
    assert wsgi_status(app, "s") == 401


def test_wsgi_entry_is_refetched_once_its_ttl_has_passed(clocked: Build) -> None:
    setup, app, _ = wsgi_app(clocked, record("s"))
    assert wsgi_status(app, "s") == 200
    setup.backend.set_status("s", SessionStatus.REVOKED)
    setup.clocks.advance(TTL - 1)
    assert wsgi_status(app, "s") == 200
    assert setup.backend.calls == 1
    setup.clocks.advance(1)
    assert wsgi_status(app, "s") == 401
    assert setup.backend.calls == 2


def test_wsgi_hit_path_records_activity(clocked: Build) -> None:
    setup, app, _ = wsgi_app(clocked, record("s"))
    assert wsgi_status(app, "s") == 200
    setup.cache.take_activity()
    setup.clocks.advance(5)
    allowed = setup.cache.allowed_hits
    assert wsgi_status(app, "s") == 200
    assert setup.cache.allowed_hits == allowed + 1, "served by the hit path"
    assert setup.cache.take_activity() == {"s": WALL + 5}


def test_wsgi_every_request_gets_the_sessions_handle(clocked: Build) -> None:
    """sessionmw.wsgi.sessions(environ) works on hits, full checks and exempt paths."""
    setup = clocked(record("s"))
    inner = Inner()
    app = sessionmw.wsgi.DeviceSessionMiddleware(inner, backend=setup.backend)
    assert wsgi_status(app, "s") == 200  # full path
    assert wsgi_status(app, "s") == 200  # hit path
    assert wsgi_status(app, "nope", path="/healthz") == 200  # exempt
    assert len(inner.environs) == 3
    for environ in inner.environs:
        assert sessionmw.wsgi.sessions(environ) is app.sessions
    assert [e.get(ENVIRON_KEY) is not None for e in inner.environs] == [True, True, False]


# -- cache ----------------------------------------------------------------------------


def test_cache_hit_measures_the_wall_offset_at_each_store() -> None:
    """A wall-clock step before a fetch shows in the next hit's expiry judgement."""
    clocks = Clocks()
    backend = MemoryBackend([record("s", expires_at=WALL + 3600 + 30)])
    cache = MemoryCache(backend, ttl=TTL, clock=clocks.monotonic, wall_clock=clocks.time)
    clocks.wall += 3600  # NTP step after the cache was built
    assert cache.lookup("s") is not None
    assert cache.hit("s") is not None
    clocks.advance(31)
    assert cache.hit("s") is None, "expired 1 s ago by the wall clock"


# -- hook -------------------------------------------------------------------------------


def _signed(msg_id: str, timestamp: str, body: bytes, *, version: str = "v1") -> dict[str, str]:
    digest = hmac.new(
        secret_key(SECRET), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"{version}," + base64.b64encode(digest).decode(),
    }


BODY = json.dumps({"events": [{"type": "flush"}]}).encode()


@pytest.mark.parametrize("offset", [-300, 300])
def test_tolerance_boundary_is_inclusive(offset: int) -> None:
    hook, applied = make_hook(FakeBus())
    headers = _signed("m", str(int(NOW) + offset), BODY)
    assert hook.handle(headers, BODY).status == 200
    assert len(applied) == 1


def test_webhook_id_of_the_maximum_length_is_accepted() -> None:
    hook, _ = make_hook(FakeBus())
    msg_id = "m" * 256
    assert hook.handle(_signed(msg_id, str(int(NOW)), BODY), BODY).status == 200


@pytest.mark.parametrize(
    "timestamp",
    [
        "".join(chr(0x0660 + int(d)) for d in str(int(NOW))),  # Arabic-Indic digits
        "+" + str(int(NOW)),
        " " + str(int(NOW)),
        str(int(NOW))[:5] + "_" + str(int(NOW))[5:],
    ],
    ids=["arabic_indic", "plus", "space", "underscore"],
)
def test_timestamp_must_be_plain_ascii_digits_even_when_signed(timestamp: str) -> None:
    hook, applied = make_hook(FakeBus())
    answer = hook.handle(_signed("m", timestamp, BODY), BODY)
    assert answer.code == "invalid_signature"
    assert applied == []


def test_signature_base64_is_strict() -> None:
    """Characters outside the base64 alphabet make a signature invalid, not ignored."""
    hook, applied = make_hook(FakeBus())
    headers = _signed("m", str(int(NOW)), BODY)
    version, _, encoded = headers["webhook-signature"].partition(",")
    headers["webhook-signature"] = f"{version},{encoded[:10]}!{encoded[10:]}"
    assert hook.handle(headers, BODY).code == "invalid_signature"
    assert applied == []


@pytest.mark.parametrize("version", ["v2", "v1a", "V1", ""])
def test_only_v1_signatures_count(version: str) -> None:
    hook, applied = make_hook(FakeBus())
    headers = _signed("m", str(int(NOW)), BODY, version=version)
    assert hook.handle(headers, BODY).code == "invalid_signature"
    assert applied == []


async def test_lone_surrogate_in_webhook_id_is_an_invalid_signature() -> None:
    hook, applied = make_hook(FakeBus())
    headers = {
        "webhook-id": "m\ud800",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": sign(SECRET, "m", int(NOW), BODY),
    }
    assert hook.handle(headers, BODY).code == "invalid_signature"
    assert (await hook.ahandle(headers, BODY)).code == "invalid_signature"
    assert applied == []


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_revocation_is_applied_here_even_when_the_bus_refuses_it(mode: str) -> None:
    """The bus being down must not leave this process serving a revoked session."""
    bus = FakeBus(ConnectionError("bus down"))
    hook, applied = make_hook(bus)
    headers, body = request([{"type": "session_revoked", "session_id": "s1"}])
    answer = hook.handle(headers, body) if mode == "sync" else await hook.ahandle(headers, body)
    assert answer.status == 503
    assert applied == [[SessionRevoked("s1")]]


# -- body ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(" 12", 12), ("12\t", 12), (b" 7 ", 7)])
def test_content_length_allows_surrounding_whitespace(value: str | bytes, expected: int) -> None:
    assert declared_length(value) == expected


@pytest.mark.parametrize("value", ["", "  ", b""])
def test_empty_content_length_is_not_declared(value: str | bytes) -> None:
    """CGI servers pass CONTENT_LENGTH="" for a request without one."""
    assert declared_length(value) is None


# -- gate (async idle) and activity -------------------------------------------------------


async def test_acheck_refuses_an_idle_session_after_a_fresh_store_read() -> None:
    store = CountingStore(stored("s", last_seen=1_800_000_000.0))
    clock = ActivityClock()
    gate = gate_with(store, clock, idle=100, touch=10)
    assert isinstance(await gate.acheck("s"), SessionRecord)
    clock.now = 150
    answer = await gate.acheck("s")
    assert getattr(answer, "code", None) == "invalid_session"
    assert gate.hit("s") is None


async def test_acheck_rereads_the_store_before_refusing_for_idleness() -> None:
    store = CountingStore(stored("s", last_seen=1_800_000_000.0))
    clock = ActivityClock()
    gate = gate_with(store, clock, idle=100, touch=10)
    assert isinstance(await gate.acheck("s"), SessionRecord)
    clock.now = 150
    store.touch_many([("s", 1_800_000_000.0 + 145)])  # another worker's flush
    assert isinstance(await gate.acheck("s"), SessionRecord)


def test_requests_recorded_here_count_before_judging_idleness() -> None:
    """Hits not yet collected by the flusher still prove the session is in use."""
    store = CountingStore(stored("s", last_seen=1_800_000_000.0))
    clock = ActivityClock()
    gate = gate_with(store, clock, idle=100, touch=10)
    assert isinstance(gate.check("s"), SessionRecord)
    clock.now = 90
    assert gate.hit("s") is not None  # recorded in the cache, not collected yet
    clock.now = 150
    assert isinstance(gate.check("s"), SessionRecord)


def test_a_session_never_seen_is_not_idle() -> None:
    """A new session (no last_seen in the store, no request yet) is let in."""
    store = CountingStore(stored("new"))
    clock = ActivityClock()
    gate = gate_with(store, clock, idle=100, touch=10)
    assert isinstance(gate.check("new"), SessionRecord)
    assert gate.activity is not None
    assert gate.activity.idle("never") is False


def test_idle_timeout_boundary_is_exclusive() -> None:
    store = CountingStore(stored("s"))
    clock, _, flusher = make_flusher(store, touch=10, idle=100)
    flusher.fetched("s", clock.wall())
    clock.now = 100
    assert flusher.idle("s") is False
    clock.now = 100.5
    assert flusher.idle("s") is True


def test_pending_writes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessionmw.activity, "MAX_PENDING", 2)
    store = CountingStore(stored("a"), stored("b"), stored("c"))
    clock, cache, flusher = make_flusher(store, touch=10)
    for sid in ("a", "b", "c"):
        cache.lookup(sid)  # an allowed request's session is cached
    for second, sid in enumerate(("a", "b", "c"), start=1):
        clock.now = float(second)
        cache.touch(sid)
    flusher.collect()
    assert sorted(flusher.pending) == ["b", "c"], "the oldest is dropped"


# -- events ------------------------------------------------------------------------------


def _user_event(before: Any) -> dict[str, Any]:
    return {"type": "user_sessions_revoked", "user_id": "u", "before": before}


def test_huge_integer_before_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidPayload):
        parse_event(_user_event(10**400))
    body = b'{"events": [{"type": "user_sessions_revoked", "user_id": "u", "before": 1' + (
        b"0" * 400 + b"}]}"
    )
    with pytest.raises(InvalidPayload):
        parse_batch(body)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_before_is_invalid(literal: bytes) -> None:
    """Python's json accepts NaN and Infinity: a NaN watermark would revoke nothing."""
    body = b'{"events": [{"type": "user_sessions_revoked", "user_id": "u", "before": '
    with pytest.raises(InvalidPayload):
        parse_batch(body + literal + b"}]}")
    with pytest.raises(InvalidPayload):
        from_fields({"type": "user_sessions_revoked", "user_id": "u", "before": "nan"})


def test_ids_are_bounded_in_length() -> None:
    assert parse_event({"type": "session_revoked", "session_id": "s" * 1024}) == SessionRevoked(
        "s" * 1024
    )
    for event in (
        {"type": "session_revoked", "session_id": "s" * 1025},
        {"type": "user_sessions_revoked", "user_id": "u" * 1025},
    ):
        with pytest.raises(InvalidPayload):
            parse_event(event)


def test_empty_before_field_means_no_before() -> None:
    """A stream entry written with before="" (redis-cli) revokes up to now."""
    fields = {"type": "user_sessions_revoked", "user_id": "u", "before": ""}
    assert from_fields(fields) == UserSessionsRevoked("u", None)


# -- settings -----------------------------------------------------------------------------


def test_unknown_setting_names_the_closest_key() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'ttl'"):
        Settings.from_mapping({"tll": 5})
    with pytest.raises(ConfigError, match=r"did you mean 'ttl'"):
        Settings().with_changes(tll=5)


def test_secret_with_characters_outside_base64_is_refused() -> None:
    secret = new_secret()
    broken = secret[:12] + "*" + secret[12:]
    with pytest.raises(ConfigError) as info:
        Settings(invalidation_secret=broken)
    assert getattr(info.value, "key", None) == "invalidation_secret"
