"""OpenID Connect Back-Channel Logout (SPEC section 14) against a local provider over
real HTTP (:mod:`tests.oidc_provider`), tokens minted with PyJWT.

* every validation rule has its own failing token: 400 ``invalid_request``, nothing
  applied, nothing written;
* a valid token by ``sid`` revokes exactly the sessions created with that ``idp_sid``;
  by ``sub``, every session of the user; a replayed ``jti`` applies nothing twice;
* 500 seeded random mutations of a valid token never give a 5xx nor apply anything;
* the JWKS: discovery, key rotation, at most one refetch a minute under a flood of
  unknown ``kid`` values (injected clock), one shared fetch for concurrent callers;
* a store or bus failure is a 503 and releases the ``jti`` for the provider's retry;
* every adapter (Starlette, plain WSGI, Flask, Django) answers 200/400/405/413.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlencode

import pytest

from sessionmw import ConfigError, Sessions, Settings
from sessionmw._body import MAX_BODY
from sessionmw.answers import Answer
from sessionmw.bus import LocalBus
from sessionmw.events import Event, UserSessionsRevoked
from sessionmw.gate import Gate
from sessionmw.idp.jwks import JWKSCache
from sessionmw.idp.receivers import BackChannelLogout, Revoker
from tests.oidc_provider import (
    ADAPTERS,
    AUDIENCE,
    BACKCHANNEL_LOGOUT,
    DROP,
    Provider,
    ReceiverWorld,
    b64url,
    ec_key,
    mounted,
    rsa_key,
)

FORM = "application/x-www-form-urlencoded"
HEADERS = {"content-type": FORM}
INVALID = (400, b'{"error": "invalid_request"}')
LOGOUT_PATH = "/_internal/oidc-backchannel-logout"

pytestmark = pytest.mark.usefixtures("fresh_gates")


@pytest.fixture(scope="module")
def op() -> Iterator[Provider]:
    with Provider() as provider:
        yield provider


def form(token: str) -> bytes:
    return urlencode({"logout_token": token}).encode()


class World(ReceiverWorld):
    """A gate with back-channel logout on, its sessions and a way to post tokens."""

    def __init__(self, op: Provider) -> None:
        settings = Settings(oidc_issuer=op.issuer, oidc_audience=[AUDIENCE, "other-app"])
        super().__init__(settings, "oidc", FORM)

    def post(self, body: bytes, content_type: str = FORM) -> tuple[int, bytes]:
        answer = self.answer(body, content_type)
        return answer.status, answer.body

    def apost(self, body: bytes) -> tuple[int, bytes]:
        answer = self.answer(body, through_async=True)
        return answer.status, answer.body


@pytest.fixture
def world(op: Provider) -> World:
    return World(op)


# -- effects -----------------------------------------------------------------------------


def test_sid_revokes_exactly_that_idp_session(world: World, op: Provider) -> None:
    """sid -> every session created with that idp_sid refused (store and cache); the
    user's other sessions and other users' pass."""
    a1 = world.sessions.create("alice", idp_sid="op-sid-1").session_id
    a2 = world.sessions.create("alice", idp_sid="op-sid-1").session_id
    a3 = world.sessions.create("alice", idp_sid="op-sid-2").session_id
    b1 = world.sessions.create("bob", idp_sid="op-sid-3").session_id
    for sid in (a1, a2, a3, b1):
        assert world.active(sid)  # cached now: the refusal must come from the event
    status, body = world.post(form(op.logout_token(sid="op-sid-1", sub="alice")))
    assert (status, body) == (200, b"")
    assert not world.active(a1)
    assert not world.active(a2)
    assert world.active(a3)
    assert world.active(b1)


def test_answer_headers(world: World, op: Provider) -> None:
    """200 carries Cache-Control: no-store (Back-Channel Logout 1.0, section 2.8); a 400 too."""
    ok = world.receiver.handle(HEADERS, form(op.logout_token(sid="x")))
    bad = world.receiver.handle(HEADERS, form("nope"))
    assert ("cache-control", "no-store") in ok.headers
    assert ("cache-control", "no-store") in bad.headers


def test_sub_revokes_every_session_of_the_user(world: World, op: Provider) -> None:
    """sub without sid -> revoke_user(sub): all of that user's sessions; others pass."""
    mine = [world.sessions.create("carol", idp_sid=f"s{i}").session_id for i in range(3)]
    other = world.sessions.create("dave").session_id
    assert all(world.active(s) for s in [*mine, other])
    assert world.post(form(op.logout_token(sub="carol", kid="ec-1")))[0] == 200
    assert not any(world.active(s) for s in mine)
    assert world.active(other)
    # A login after the logout is not caught by it.
    assert world.active(world.sessions.create("carol").session_id)


def test_replayed_jti_applies_nothing_twice(world: World, op: Provider) -> None:
    """The same token twice: 200 both times, the events applied once."""
    victim = world.sessions.create("erin", idp_sid="replayed").session_id
    token = op.logout_token(sid="replayed")
    assert world.post(form(token))[0] == 200
    applied = world.applied
    assert applied > 0
    assert not world.active(victim)
    assert world.post(form(token)) == (200, b"")
    assert world.apost(form(token)) == (200, b"")
    assert world.applied == applied


def test_async_path(world: World, op: Provider) -> None:
    """ahandle: same answers, same effect."""
    victim = world.sessions.create("fay", idp_sid="async-sid").session_id
    assert world.apost(form(op.logout_token(sid="async-sid")))[0] == 200
    assert not world.active(victim)
    assert world.apost(form(op.logout_token(sid="x", nonce="n"))) == INVALID


def test_jti_length_limit(world: World, op: Provider) -> None:
    """A jti of 1024 characters is accepted, one of 1025 is 400 invalid_request and
    revokes nothing."""
    victim = world.sessions.create("gil", idp_sid="long-jti").session_id
    assert world.active(victim)
    too_long = op.logout_token(sid="long-jti", jti="j" * 1025)
    assert world.post(form(too_long)) == INVALID
    assert world.apost(form(too_long)) == INVALID
    assert world.active(victim)
    assert world.post(form(op.logout_token(sid="long-jti", jti="j" * 1024))) == (200, b"")
    assert not world.active(victim)


class LaggingStore:
    """A store whose ``revoke_user`` finds nothing (a replica behind the primary):
    the rest is the real store's."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def revoke_user(self, user_id: str) -> list[str]:
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_sub_only_logout_sends_a_user_watermark(world: World, op: Provider) -> None:
    """sub without sid: the events applied and published carry
    UserSessionsRevoked(sub, before=now), so a cached session of that user is refused
    even when the store's revoke_user returned no session IDs."""
    bus = FlakyBus()
    bus.fail = False
    applied: list[Event] = []
    receiver, _, _ = _receiver(op, Clock(), bus=bus, apply=applied.extend)
    start = time.time()
    assert receiver.handle(HEADERS, form(op.logout_token(sub="hal"))).status == 200
    marks = [e for e in applied if isinstance(e, UserSessionsRevoked)]
    assert [m.user_id for m in marks] == ["hal"]
    assert marks[0].before is not None
    assert start <= marks[0].before <= time.time()
    assert list(bus.published) == [applied]

    victim = world.sessions.create("hal").session_id
    assert world.active(victim)  # cached active
    logout = world.gate.oidc
    assert isinstance(logout, BackChannelLogout)
    logout.revoker.store = LaggingStore(logout.revoker.store)
    assert world.post(form(op.logout_token(sub="hal"))) == (200, b"")
    refused = world.gate.check(victim)
    assert isinstance(refused, Answer)
    assert refused.status == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"typ": None},  # older providers omit typ
        {"typ": "JWT"},
        {"typ": "application/logout+jwt"},
        {"aud": ["someone-else", AUDIENCE]},
        {"aud": "other-app"},  # the second configured audience
        {"exp": +120},  # times: offsets from the moment the test runs
        {"iat": -290},
        {"iat": +290},
        {"events": {BACKCHANNEL_LOGOUT: {}, "https://example.com/other": {}}},
        {"extra": {"nested": [1, 2]}},
    ],
    ids=lambda c: repr(c)[:40],
)
def test_accepted_variants(world: World, op: Provider, claims: dict[str, Any]) -> None:
    """Valid tokens in their allowed variety are accepted (200) and applied."""
    victim = world.sessions.create("gil", idp_sid="variant").session_id
    typ = claims.pop("typ", "logout+jwt")
    for key in ("exp", "iat"):
        if key in claims:
            claims[key] += int(time.time())
    token = op.sign(op.logout_claims(sid="variant", **claims), typ=typ)
    assert world.post(form(token)) == (200, b"")
    assert not world.active(victim)


# -- every rule has its failing token ----------------------------------------------------

OTHER_KEY = rsa_key("rsa-1")  # the provider's kid, another key: a bad signature


def _cases(op: Provider) -> dict[str, str]:
    now = int(time.time())
    good = op.logout_claims(sid="victim-sid")
    token = op.logout_token(sid="victim-sid")
    head, payload, signature = token.split(".")
    return {
        "alg none": op.unsigned(good),
        "hmac keyed with the public key": op.hmac_with_public_key(good),
        "unknown kid": op.sign(good, key=rsa_key("never-published")),
        "bad signature": op.sign(good, key=OTHER_KEY),
        "payload swapped": f"{head}.{op.logout_token(sub='someone').split('.')[1]}.{signature}",
        "signature dropped": f"{head}.{payload}.",
        "nonce present": op.logout_token(sid="victim-sid", nonce="abc"),
        "stale iat": op.logout_token(sid="victim-sid", iat=now - 330),
        "future iat": op.logout_token(sid="victim-sid", iat=now + 330),
        "missing iat": op.logout_token(sid="victim-sid", iat=DROP),
        "iat not a number": op.logout_token(sid="victim-sid", iat=str(now)),
        "expired exp": op.logout_token(sid="victim-sid", exp=now - 1),
        "missing events": op.logout_token(sid="victim-sid", events=DROP),
        "wrong events member": op.logout_token(
            sid="victim-sid", events={"http://schemas.openid.net/event/other": {}}
        ),
        "events member not an object": op.logout_token(
            sid="victim-sid", events={BACKCHANNEL_LOGOUT: "yes"}
        ),
        "events not an object": op.logout_token(sid="victim-sid", events=[BACKCHANNEL_LOGOUT]),
        "missing sid and sub": op.logout_token(),
        "empty sid": op.logout_token(sid=""),
        "sid not a string": op.logout_token(sid=42),
        "sub not a string": op.logout_token(sub=["victim"]),
        "wrong iss": op.logout_token(sid="victim-sid", iss=op.issuer + "/other"),
        "missing iss": op.logout_token(sid="victim-sid", iss=DROP),
        "wrong aud": op.logout_token(sid="victim-sid", aud="someone-else"),
        "aud list without ours": op.logout_token(sid="victim-sid", aud=["a", "b"]),
        "missing aud": op.logout_token(sid="victim-sid", aud=DROP),
        "missing jti": op.logout_token(sid="victim-sid", jti=DROP),
        "empty jti": op.logout_token(sid="victim-sid", jti=""),
        "jti not a string": op.logout_token(sid="victim-sid", jti=7),
        "typ of an access token": op.sign(good, typ="at+jwt"),
        "typ of a security event": op.sign(good, typ="secevent+jwt"),
        "nbf in the future": op.logout_token(sid="victim-sid", nbf=now + 120),
        "not a JWT": "hello",
        "JWE-shaped": "a.b.c.d.e",
        "empty": "",
    }


@pytest.mark.parametrize(
    "name",
    [
        "alg none", "hmac keyed with the public key", "unknown kid", "bad signature",
        "payload swapped", "signature dropped", "nonce present", "stale iat", "future iat",
        "missing iat", "iat not a number", "expired exp", "missing events",
        "wrong events member", "events member not an object", "events not an object",
        "missing sid and sub", "empty sid", "sid not a string", "sub not a string",
        "wrong iss", "missing iss", "wrong aud", "aud list without ours", "missing aud",
        "missing jti", "empty jti", "jti not a string", "typ of an access token",
        "typ of a security event", "nbf in the future", "not a JWT", "JWE-shaped", "empty",
    ],
)  # fmt: skip
def test_invalid_token(world: World, op: Provider, name: str) -> None:
    """Each broken rule: 400 invalid_request, the session untouched, nothing applied."""
    victim = world.sessions.create("victim", idp_sid="victim-sid").session_id
    assert world.active(victim)
    before = world.applied
    token = _cases(op)[name]
    assert world.post(form(token)) == INVALID
    assert world.apost(form(token)) == INVALID
    assert world.active(victim)
    assert world.applied == before


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"logout_token=x", "application/json"),
        (b"logout_token=x", ""),
        (b"", FORM),
        (b"other=1", FORM),
        (b"%%%", FORM),
        (b"logout_token", FORM),
        (b"\xff\xfe=\xff", FORM),
        (b"logout_token=a&logout_token=b", FORM),
        (b"&".join(b"f%d=1" % i for i in range(100)), FORM),
    ],
    ids=["json", "no type", "empty", "no field", "bad escapes", "no value", "not utf-8",
         "two tokens", "many fields"],
)  # fmt: skip
def test_bad_bodies(world: World, body: bytes, content_type: str) -> None:
    """A body that is no form carrying exactly one logout_token: 400 invalid_request."""
    assert world.post(body, content_type) == INVALID


def test_a_valid_token_in_a_json_body_is_refused(world: World, op: Provider) -> None:
    """The token must come as the form field, whatever else the body holds."""
    victim = world.sessions.create("hal", idp_sid="json-sid").session_id
    token = op.logout_token(sid="json-sid")
    assert world.post(b'{"logout_token": "%s"}' % token.encode(), "application/json") == INVALID
    assert world.active(victim)


# -- fuzz --------------------------------------------------------------------------------


def _mutations(token: str, rng: random.Random, count: int) -> Iterator[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %\x00é"
    parts = token.split(".")
    for _ in range(count):
        kind = rng.randrange(7)
        text = list(token)
        if kind == 0:  # flip characters
            for _ in range(rng.randint(1, 4)):
                text[rng.randrange(len(text))] = rng.choice(alphabet)
            yield "".join(text)
        elif kind == 1:  # delete a slice
            i = rng.randrange(len(text))
            yield token[:i] + token[i + rng.randint(1, 40) :]
        elif kind == 2:  # insert junk
            i = rng.randrange(len(text))
            junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
            yield token[:i] + junk + token[i:]
        elif kind == 3:  # shuffle or duplicate segments
            segments = parts[:]
            rng.shuffle(segments)
            yield ".".join(segments[: rng.randint(1, 5)] + segments[: rng.randint(0, 2)])
        elif kind == 4:  # truncate
            yield token[: rng.randrange(len(token))]
        elif kind == 5:  # one segment replaced by random base64url
            segments = parts[:]
            segments[rng.randrange(3)] = "".join(
                rng.choice(alphabet[:64]) for _ in range(rng.randint(0, 300))
            )
            yield ".".join(segments)
        else:  # bit flip in a decoded-looking position
            i = rng.randrange(len(text))
            text[i] = chr(ord(text[i]) ^ (1 << rng.randrange(7)))
            yield "".join(text)


def test_random_mutations_never_5xx_nor_apply(world: World, op: Provider) -> None:
    """500 seeded mutations of a valid (already applied) token: only 200 (the same
    token again, a duplicate) or 400, never a 5xx, and nothing applied."""
    token = op.logout_token(sid="fuzzed-sid")
    assert world.post(form(token))[0] == 200
    bystander = world.sessions.create("ivy", idp_sid="fuzzed-other").session_id
    assert world.active(bystander)
    before = world.applied
    rng = random.Random(8935)
    seen: dict[int, int] = {}
    for mutated in _mutations(token, rng, 500):
        status, _ = world.post(urlencode({"logout_token": mutated}).encode())
        seen[status] = seen.get(status, 0) + 1
        assert status in (200, 400), (status, mutated)
    assert world.applied == before
    assert world.active(bystander)
    assert seen.get(400, 0) >= 450, seen


# -- the JWKS ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _receiver(
    op: Provider, clock: Clock, *, bus: Any = None, apply: Callable[..., None] | None = None
) -> tuple[BackChannelLogout, JWKSCache, Any]:
    from sessionmw.backends import MemoryBackend

    store = MemoryBackend()
    keys = JWKSCache(op.issuer, clock=clock, timeout=5)
    receiver = BackChannelLogout(
        issuer=op.issuer,
        audiences=[AUDIENCE],
        keys=keys,
        revoker=Revoker(store, apply or (lambda events: None), bus or LocalBus(), source="oidc"),
    )
    return receiver, keys, store


def test_discovery_then_cached(op: Provider) -> None:
    """The first token fetches discovery and the JWKS; later ones no more."""
    receiver, keys, _ = _receiver(op, Clock())
    fetches, discoveries = op.jwks_fetches, op.discovery_fetches
    for _ in range(5):
        assert receiver.handle(HEADERS, form(op.logout_token(sid="s"))).status == 200
    assert (op.jwks_fetches - fetches, op.discovery_fetches - discoveries) == (1, 1)
    assert keys.fetches == 1


def test_rotation_picked_up_at_most_once_a_minute(op: Provider) -> None:
    """A new key published after the first fetch: its tokens are refused until a
    minute has passed since the last fetch, then one refetch accepts them."""
    clock = Clock()
    with Provider() as rotating:
        receiver, _keys, _ = _receiver(rotating, clock)
        assert receiver.handle(HEADERS, form(rotating.logout_token(sid="a"))).status == 200
        old = rotating.key("rsa-1")
        new = rotating.rotate(drop=("rsa-1",))
        token = rotating.logout_token(sid="b", kid=new.kid)
        clock.now += 30
        assert receiver.handle(HEADERS, form(token)).status == 400
        assert rotating.jwks_fetches == 1
        clock.now += 31
        assert receiver.handle(HEADERS, form(token)).status == 200
        assert rotating.jwks_fetches == 2
        # The withdrawn key no longer verifies once the set was refetched.
        withdrawn = rotating.sign(rotating.logout_claims(sid="c"), key=old)
        assert receiver.handle(HEADERS, form(withdrawn)).status == 400


def test_unknown_kid_flood_fetches_at_most_once_a_minute(op: Provider) -> None:
    """200 tokens with random kids: 400 each; the JWKS fetched once in the first
    minute (the initial fetch), once more after it."""
    clock = Clock()
    receiver, _keys, _ = _receiver(op, clock)
    start = op.jwks_fetches
    claims = op.logout_claims(sid="flood")
    for i in range(200):
        token = op.sign(claims, key=rsa_key(f"random-{i}") if i % 50 == 0 else OTHER_KEY,
                        headers={"kid": uuid.uuid4().hex})  # fmt: skip
        assert receiver.handle(HEADERS, form(token)).status == 400
        clock.now += 0.2  # 40 s in all
    assert op.jwks_fetches - start == 1
    clock.now += 60
    for _ in range(50):
        token = op.sign(claims, key=OTHER_KEY, headers={"kid": uuid.uuid4().hex})
        assert receiver.handle(HEADERS, form(token)).status == 400
    assert op.jwks_fetches - start == 2


def test_concurrent_callers_share_one_fetch(op: Provider) -> None:
    """30 threads and 30 tasks asking for an unknown kid at once: one fetch."""
    clock = Clock()
    _, keys, _ = _receiver(op, clock)
    start = op.jwks_fetches
    barrier = threading.Barrier(30)
    results: list[Any] = []

    def ask() -> None:
        barrier.wait()
        results.append(keys.keys("rsa-1"))

    threads = [threading.Thread(target=ask) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 30
    assert all(r is not None for r in results)
    assert op.jwks_fetches - start == 1

    clock.now += 61

    async def many() -> list[Any]:
        return await asyncio.gather(*(keys.akeys("unknown-kid") for _ in range(30)))

    assert all(r is not None for r in asyncio.run(many()))
    assert op.jwks_fetches - start == 2


def test_provider_down_is_400_never_500(op: Provider) -> None:
    """JWKS unreachable: tokens refused (400), no exception; keys fetched before stay."""
    clock = Clock()
    with Provider() as flaky:
        flaky.down = True
        receiver, _, _ = _receiver(flaky, clock)
        assert receiver.handle(HEADERS, form(flaky.logout_token(sid="a"))).status == 400
        assert (
            asyncio.run(receiver.ahandle(HEADERS, form(flaky.logout_token(sid="a")))).status == 400
        )
        flaky.down = False
        clock.now += 61
        assert receiver.handle(HEADERS, form(flaky.logout_token(sid="a"))).status == 200
        flaky.down = True
        clock.now += 61
        assert receiver.handle(HEADERS, form(flaky.logout_token(sid="b"))).status == 200
        token = flaky.logout_token(sid="c", kid=flaky.rotate().kid)
        assert receiver.handle(HEADERS, form(token)).status == 400


def test_jwks_url_setting_skips_discovery(op: Provider) -> None:
    """oidc_jwks_url given: no discovery request."""
    discoveries = op.discovery_fetches
    gate = Gate(
        Settings(oidc_issuer=op.issuer, oidc_audience=AUDIENCE, oidc_jwks_url=op.issuer + "/jwks")
    )
    assert gate.oidc is not None
    assert gate.oidc.handle(HEADERS, form(op.logout_token(sid="s"))).status == 200
    assert op.discovery_fetches == discoveries


def test_symmetric_keys_in_the_jwks_are_ignored() -> None:
    """An oct key in the JWKS is never used: HS256 tokens stay refused."""
    from sessionmw.idp.jwks import JWKSError, key_set

    with pytest.raises(JWKSError):
        key_set({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]})
    mixed = key_set({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
                              ec_key("e").public_jwk]})  # fmt: skip
    assert [key.kid for key in mixed.keys] == ["e"]


def _forged(alg: str, claims: dict[str, Any], kid: str) -> str:
    """A token whose header names ``alg`` (``none`` or ``HS256``, keyed with a made-up
    secret) and ``kid``: no JOSE library signs these."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    if alg == "none":
        return signing_input + "."
    mac = hmac.new(b"made-up secret", signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_disallowed_alg_fetches_no_keys(op: Provider, alg: str) -> None:
    """alg none or HS256 with a kid the cache has never seen: 400 (sync and async), and
    the JWKS is not fetched for it (the algorithm is refused before any key lookup)."""
    receiver, keys, _ = _receiver(op, Clock())
    start = op.jwks_fetches
    token = _forged(alg, op.logout_claims(sid="s"), kid=f"unknown-{uuid.uuid4().hex}")
    answer = receiver.handle(HEADERS, form(token))
    assert (answer.status, answer.body) == INVALID
    assert asyncio.run(receiver.ahandle(HEADERS, form(token))).status == 400
    assert (keys.fetches, op.jwks_fetches - start) == (0, 0)


# -- failures past verification ----------------------------------------------------------


class FlakyBus(LocalBus):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True
        self.published: list[Sequence[Event]] = []

    def publish(self, events: Sequence[Event]) -> None:
        if self.fail:
            raise ConnectionError("bus down")
        self.published.append(events)

    async def apublish(self, events: Sequence[Event]) -> None:
        self.publish(events)


def test_bus_failure_is_503_and_the_retry_applies(op: Provider) -> None:
    """Publishing fails: 503 bus_unavailable, the jti released; the provider's retry of
    the same token is then applied and published."""
    bus = FlakyBus()
    receiver, _, store = _receiver(op, Clock(), bus=bus)
    session = Sessions(backend=store).create("jo", idp_sid="flaky")
    token = op.logout_token(sid="flaky")
    answer = receiver.handle(HEADERS, form(token))
    assert (answer.status, answer.code) == (503, "bus_unavailable")
    assert asyncio.run(receiver.ahandle(HEADERS, form(token))).status == 503
    bus.fail = False
    assert receiver.handle(HEADERS, form(token)).status == 200
    assert [[e.session_id for e in batch] for batch in bus.published] == [[session.session_id]]  # type: ignore[union-attr]
    assert receiver.handle(HEADERS, form(token)).status == 200
    assert len(bus.published) == 1


# -- configuration -----------------------------------------------------------------------


def test_read_only_store_is_a_config_error(op: Provider) -> None:
    """An http store cannot be written: oidc_issuer with it fails at start-up, naming it."""
    with pytest.raises(ConfigError) as caught:
        Gate(
            Settings(
                backend="http://127.0.0.1:9/sessions/{session_id}",
                oidc_issuer=op.issuer,
                oidc_audience=AUDIENCE,
            )
        )
    assert caught.value.key == "oidc_issuer"


def test_issuer_without_audience_is_a_config_error(op: Provider) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(oidc_issuer=op.issuer)
    assert caught.value.key == "oidc_audience"


def test_path_clash_is_a_config_error(op: Provider) -> None:
    with pytest.raises(ConfigError) as caught:
        Gate(
            Settings(
                oidc_issuer=op.issuer,
                oidc_audience=AUDIENCE,
                ssf_issuer=op.issuer,
                ssf_audience=AUDIENCE,
                ssf_path=LOGOUT_PATH,
            )
        )
    assert caught.value.key == "ssf_path"


def test_not_configured_no_route() -> None:
    """Without oidc_issuer, no receiver and no internal route at all."""
    gate = Gate(Settings())
    assert (gate.oidc, gate.ssf, gate.routes) == (None, None, None)


# -- every adapter -----------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapter_answers(op: Provider, adapter: str) -> None:
    """200 (and the session refused after it), 400, 405 with Allow: POST, 413, served
    without a session header (section 7: the route passes without a session check)."""
    settings = {"oidc_issuer": op.issuer, "oidc_audience": AUDIENCE, "backend": "memory://"}
    with mounted(adapter, settings) as app:
        session = Sessions(settings).create("kim", idp_sid=f"adapter-{adapter}")
        assert app.status_of(session.session_id) == 200

        ok = app.post(LOGOUT_PATH, form(op.logout_token(sid=f"adapter-{adapter}")), FORM)
        assert ok.status_code == 200, ok.text
        assert ok.headers["cache-control"] == "no-store"
        assert app.status_of(session.session_id) == 401

        bad = app.post(LOGOUT_PATH, form(op.logout_token(sid="x", nonce="n")), FORM)
        assert (bad.status_code, bad.json()) == (400, {"error": "invalid_request"})

        for method in ("GET", "PUT", "DELETE"):
            other = app.request(method, LOGOUT_PATH)
            assert (other.status_code, other.headers["allow"]) == (405, "POST"), method

        big = app.post(LOGOUT_PATH, b"logout_token=" + b"x" * MAX_BODY, FORM)
        assert big.status_code == 413

        valid = form(op.logout_token(sub="kim"))
        malformed = app.request("POST", LOGOUT_PATH, body=valid, headers={
            "content-type": FORM, "content-length": f"+{len(valid) - 1}"})  # fmt: skip
        assert (malformed.status_code, malformed.json()) == (400, {"error": "invalid_request"})


def test_django_asgi_guard_covers_the_route(op: Provider) -> None:
    """sessionmw.contrib.django.asgi.guard answers for the logout route before Django
    reads the body: 405, 413 (declared), 400 in the route's own words; a body within
    the limit goes to Django."""
    from sessionmw.contrib.django.asgi import guard, guarded_paths

    settings = {"oidc_issuer": op.issuer, "oidc_audience": AUDIENCE, "backend": "memory://"}
    reached: list[str] = []

    async def django(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def call(method: str, length: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"logout_token=x", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        scope = {"type": "http", "method": method, "path": LOGOUT_PATH, "root_path": "",
                 "headers": [(b"content-length", length.encode())]}  # fmt: skip
        asyncio.run(guard(django)(scope, receive, send))
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    with mounted("django", settings):
        guarded_paths.cache_clear()
        try:
            assert LOGOUT_PATH in guarded_paths()
            assert call("GET", "14")[0] == 405
            assert call("POST", str(MAX_BODY + 1))[0] == 413
            assert call("POST", "+14") == INVALID
            assert reached == []
            assert call("POST", "14")[0] == 204
            assert reached == [LOGOUT_PATH]
        finally:
            guarded_paths.cache_clear()
