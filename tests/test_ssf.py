"""Shared Signals / CAEP push delivery (RFC 8935, SPEC section 14) against a local
transmitter over real HTTP (:mod:`tests.oidc_provider`), SETs minted with PyJWT.

* CAEP ``session-revoked`` by session subject revokes the sessions of that
  ``idp_sid``; by ``iss_sub`` (or a ``complex`` subject with only a user), every session
  of the user; ``credential-change`` always the user;
* an old ``iat`` is no reason to refuse (transmitters retry); a duplicate ``jti`` is
  202 and applies nothing twice;
* every refusal is 400 ``{"err": CODE, "description": ...}`` with the RFC 8935 code;
* 500 random mutations never give a 5xx nor apply anything;
* every adapter answers 202/400/405/413.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sessionmw import SessionRecord, Sessions, Settings
from sessionmw._body import MAX_BODY
from sessionmw.answers import Answer
from sessionmw.gate import Gate
from sessionmw.idp.receivers import SecurityEventReceiver
from tests.oidc_provider import (
    ADAPTERS,
    AUDIENCE,
    CREDENTIAL_CHANGE,
    DROP,
    SESSION_REVOKED,
    Provider,
    ReceiverWorld,
    mounted,
    rsa_key,
)
from tests.test_oidc_logout import FORM, _forged, _mutations, form

SET_TYPE = "application/secevent+jwt"
SSF_PATH = "/_internal/ssf"

pytestmark = pytest.mark.usefixtures("fresh_gates")


@pytest.fixture(scope="module")
def op() -> Iterator[Provider]:
    with Provider() as provider:
        yield provider


class World(ReceiverWorld):
    """A gate with security event push on, its sessions and a way to post SETs."""

    def __init__(self, op: Provider) -> None:
        super().__init__(Settings(ssf_issuer=op.issuer, ssf_audience=AUDIENCE), "ssf", SET_TYPE)

    def post(self, token: str | bytes, content_type: str = SET_TYPE) -> tuple[int, Any]:
        body = token.encode() if isinstance(token, str) else token
        return _decoded(self.answer(body, content_type))

    def apost(self, token: str) -> tuple[int, Any]:
        return _decoded(self.answer(token.encode(), through_async=True))


def _decoded(answer: Answer) -> tuple[int, Any]:
    return answer.status, json.loads(answer.body) if answer.body else None


@pytest.fixture
def world(op: Provider) -> World:
    return World(op)


# -- effects -----------------------------------------------------------------------------


def test_session_revoked_by_session_subject(world: World, op: Provider) -> None:
    """complex subject with a session: exactly the sessions of that idp_sid."""
    hit = [world.sessions.create("amy", idp_sid="caep-1").session_id for _ in range(2)]
    kept = world.sessions.create("amy", idp_sid="caep-2").session_id
    assert all(world.active(s) for s in [*hit, kept])
    assert world.post(op.set_token(sub_id=op.session_subject("caep-1", sub="amy"))) == (202, None)
    assert not any(world.active(s) for s in hit)
    assert world.active(kept)


@pytest.mark.parametrize("form", ["iss_sub", "complex user only"])
def test_session_revoked_by_user_subject(world: World, op: Provider, form: str) -> None:
    """iss_sub, or complex with only a user: every session of that user."""
    mine = [world.sessions.create("ben", idp_sid=f"b{i}").session_id for i in range(2)]
    other = world.sessions.create("cal").session_id
    subject = op.user_subject("ben")
    if form != "iss_sub":
        subject = {"format": "complex", "user": subject}
    assert world.post(op.set_token(sub_id=subject))[0] == 202
    assert not any(world.active(s) for s in mine)
    assert world.active(other)


def test_credential_change_is_always_the_user(world: World, op: Provider) -> None:
    """credential-change with a session and a user subject: all the user's sessions."""
    mine = [world.sessions.create("dee", idp_sid=f"d{i}").session_id for i in range(2)]
    token = op.set_token(CREDENTIAL_CHANGE, op.session_subject("d0", sub="dee"),
                         events={CREDENTIAL_CHANGE: {"credential_type": "password",
                                                     "change_type": "update"}})  # fmt: skip
    assert world.post(token)[0] == 202
    assert not any(world.active(s) for s in mine)


def test_old_iat_is_accepted(world: World, op: Provider) -> None:
    """A SET issued a day ago (a transmitter's retry) is applied."""
    victim = world.sessions.create("eve", idp_sid="late").session_id
    token = op.set_token(sub_id=op.session_subject("late"), iat=int(time.time()) - 86400)
    assert world.post(token)[0] == 202
    assert not world.active(victim)


def test_duplicate_is_202_and_applies_nothing(world: World, op: Provider) -> None:
    victim = world.sessions.create("fin", idp_sid="dup").session_id
    token = op.set_token(sub_id=op.session_subject("dup"))
    assert world.post(token)[0] == 202
    applied = world.applied
    assert not world.active(victim)
    assert world.post(token) == (202, None)
    assert world.apost(token) == (202, None)
    assert world.applied == applied


def test_other_event_types_are_acknowledged(world: World, op: Provider) -> None:
    """A stream verification event (or any type not acted on): 202, nothing applied."""
    before = world.applied
    token = op.set_token(
        "https://schemas.openid.net/secevent/ssf/event-type/verification",
        {"format": "opaque", "id": "stream-1"},
        events={"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "x"}},
    )
    assert world.post(token)[0] == 202
    assert world.applied == before


def test_async_path(world: World, op: Provider) -> None:
    victim = world.sessions.create("gus", idp_sid="async").session_id
    assert world.apost(op.set_token(sub_id=op.session_subject("async")))[0] == 202
    assert not world.active(victim)


def test_jti_length_limit(world: World, op: Provider) -> None:
    """A jti of 1024 characters is accepted, one of 1025 is 400 invalid_request."""
    victim = world.sessions.create("ike", idp_sid="long-jti").session_id
    too_long = op.set_token(sub_id=op.session_subject("long-jti"), jti="j" * 1025)
    for status, body in (world.post(too_long), world.apost(too_long)):
        assert status == 400, body
        assert body["err"] == "invalid_request"
    assert world.active(victim)
    assert world.post(op.set_token(sub_id=op.session_subject("long-jti"), jti="j" * 1024)) == (
        202,
        None,
    )
    assert not world.active(victim)


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_disallowed_alg_fetches_no_keys(world: World, op: Provider, alg: str) -> None:
    """alg none or HS256 with a kid never seen: 400 authentication_failed, and the
    JWKS is not fetched for it."""
    receiver = world.gate.ssf
    assert isinstance(receiver, SecurityEventReceiver)
    start = op.jwks_fetches
    token = _forged(alg, op.set_claims(sub_id=op.session_subject("s")), kid="unknown-kid")
    for status, body in (world.post(token), world.apost(token)):
        assert status == 400, body
        assert body["err"] == "authentication_failed"
    assert (receiver.keys.fetches, op.jwks_fetches - start) == (0, 0)


def _both_routes(op: Provider) -> tuple[Gate, Sessions]:
    gate = Gate(
        Settings(
            oidc_issuer=op.issuer,
            oidc_audience=AUDIENCE,
            ssf_issuer=op.issuer,
            ssf_audience=AUDIENCE,
        )
    )
    return gate, Sessions(gate)


def _post(gate: Gate, path: str, body: bytes, content_type: str) -> int:
    assert gate.routes is not None
    return gate.routes[path].handle({"content-type": content_type}, body).status


def test_same_jti_in_a_logout_token_and_a_set_both_apply(op: Provider) -> None:
    """The two routes share the gate's replay guard, but a logout token and a SET
    carrying the same jti are different tokens: both are applied."""
    gate, sessions = _both_routes(op)
    by_logout = sessions.create("jay", idp_sid="shared-jti-1").session_id
    by_set = sessions.create("kim", idp_sid="shared-jti-2").session_id
    for session_id in (by_logout, by_set):
        assert isinstance(gate.check(session_id), SessionRecord)
    jti = "same-jti-" + uuid.uuid4().hex
    logout = op.logout_token(sid="shared-jti-1", jti=jti)
    assert _post(gate, gate.settings.oidc_logout_path, form(logout), FORM) == 200
    token = op.set_token(sub_id=op.session_subject("shared-jti-2"), jti=jti)
    assert _post(gate, gate.settings.ssf_path, token.encode(), SET_TYPE) == 202
    for session_id in (by_logout, by_set):
        refused = gate.check(session_id)
        assert isinstance(refused, Answer)
        assert refused.status == 401


def test_events_received_are_counted_by_source(op: Provider) -> None:
    """Events from the logout route count as source oidc, those of a SET as ssf;
    none as hook."""
    gate, sessions = _both_routes(op)
    sessions.create("lou", idp_sid="by-source-1")
    sessions.create("lou", idp_sid="by-source-2")
    sessions.create("max", idp_sid="by-source-3")
    logout = op.logout_token(sid="by-source-1")
    assert _post(gate, gate.settings.oidc_logout_path, form(logout), FORM) == 200
    assert gate.stats()["events_received"] == {"oidc": 1}
    token = op.set_token(sub_id=op.user_subject("lou"))  # one session left, one watermark
    assert _post(gate, gate.settings.ssf_path, token.encode(), SET_TYPE) == 202
    assert gate.stats()["events_received"] == {"oidc": 1, "ssf": 2}


# -- refusals ----------------------------------------------------------------------------


def _cases(op: Provider, name: str) -> tuple[str, str]:
    """The token of a failing case and the RFC 8935 code it must get."""
    now = int(time.time())
    subject = op.session_subject("target")
    good = op.set_claims(sub_id=subject)
    token = op.set_token(sub_id=subject)
    head, _payload, signature = token.split(".")
    cases: dict[str, tuple[Any, str]] = {
        "alg none": (lambda: op.unsigned(good), "authentication_failed"),
        "hmac keyed with the public key": (
            lambda: op.hmac_with_public_key(good), "authentication_failed"),
        "bad signature": (lambda: op.sign(good, key=rsa_key("rsa-1")), "authentication_failed"),
        "payload swapped": (
            lambda: f"{head}.{op.set_token(sub_id=op.user_subject('x')).split('.')[1]}.{signature}",
            "authentication_failed"),
        "unknown kid": (lambda: op.sign(good, key=rsa_key("never-seen")), "invalid_key"),
        "wrong iss": (lambda: op.set_token(sub_id=subject, iss="https://evil"), "invalid_issuer"),
        "missing iss": (lambda: op.set_token(sub_id=subject, iss=DROP), "invalid_issuer"),
        "wrong aud": (lambda: op.set_token(sub_id=subject, aud="nope"), "invalid_audience"),
        "missing aud": (lambda: op.set_token(sub_id=subject, aud=DROP), "invalid_audience"),
        "expired exp": (lambda: op.set_token(sub_id=subject, exp=now - 1), "invalid_request"),
        "missing jti": (lambda: op.set_token(sub_id=subject, jti=DROP), "invalid_request"),
        "missing events": (lambda: op.set_token(sub_id=subject, events=DROP), "invalid_request"),
        "empty events": (lambda: op.set_token(sub_id=subject, events={}), "invalid_request"),
        "event not an object": (
            lambda: op.set_token(sub_id=subject, events={SESSION_REVOKED: 1}), "invalid_request"),
        "missing sub_id": (lambda: op.set_token(), "invalid_request"),
        "email subject": (
            lambda: op.set_token(sub_id={"format": "email", "email": "a@b.c"}), "invalid_request"),
        "session not opaque": (
            lambda: op.set_token(sub_id={"format": "complex",
                                         "session": {"format": "email", "email": "x"}}),
            "invalid_request"),
        "complex without members": (
            lambda: op.set_token(sub_id={"format": "complex"}), "invalid_request"),
        "iss_sub without sub": (
            lambda: op.set_token(sub_id={"format": "iss_sub", "iss": op.issuer}),
            "invalid_request"),
        "credential change without user": (
            lambda: op.set_token(CREDENTIAL_CHANGE, subject), "invalid_request"),
        "typ of a logout token": (lambda: op.sign(good, typ="logout+jwt"), "invalid_request"),
        "not a JWT": (lambda: "hello", "invalid_request"),
    }  # fmt: skip
    make, code = cases[name]
    return make(), code


CASES = [
    "alg none", "hmac keyed with the public key", "bad signature", "payload swapped",
    "unknown kid", "wrong iss", "missing iss", "wrong aud", "missing aud", "expired exp",
    "missing jti", "missing events", "empty events", "event not an object", "missing sub_id",
    "email subject", "session not opaque", "complex without members", "iss_sub without sub",
    "credential change without user", "typ of a logout token", "not a JWT",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_refused_with_its_code(world: World, op: Provider, name: str) -> None:
    """400 {"err": CODE, "description": ...}; nothing applied, the session untouched."""
    victim = world.sessions.create("hugo", idp_sid="target").session_id
    assert world.active(victim)
    token, code = _cases(op, name)
    for status, body in (world.post(token), world.apost(token)):
        assert status == 400
        assert set(body) == {"err", "description"}, body
        assert body["err"] == code, body
        assert isinstance(body["description"], str)
    assert world.active(victim)
    assert world.applied == 0


@pytest.mark.parametrize("content_type", ["application/jwt", "application/json", "", "text/plain"])
def test_wrong_content_type(world: World, op: Provider, content_type: str) -> None:
    """A valid SET with another Content-Type: 400 invalid_request, not applied."""
    victim = world.sessions.create("ida", idp_sid="ct").session_id
    status, body = world.post(op.set_token(sub_id=op.session_subject("ct")), content_type)
    assert (status, body["err"]) == (400, "invalid_request")
    assert world.active(victim)


def test_content_type_parameters_allowed(world: World, op: Provider) -> None:
    assert world.post(op.set_token(sub_id=op.user_subject("z")),
                      "Application/SecEvent+JWT; charset=utf-8")[0] == 202  # fmt: skip


def test_non_ascii_body(world: World) -> None:
    assert world.post(b"\xff\xfe")[1]["err"] == "invalid_request"


def test_random_mutations_never_5xx_nor_apply(world: World, op: Provider) -> None:
    """500 seeded mutations of an applied SET: 202 (the same SET: a duplicate) or 400."""
    token = op.set_token(sub_id=op.session_subject("fuzz"))
    assert world.post(token)[0] == 202
    bystander = world.sessions.create("jon", idp_sid="fuzz-other").session_id
    assert world.active(bystander)
    before = world.applied
    counts: dict[int, int] = {}
    for mutated in _mutations(token, random.Random(9493), 500):
        status, _ = world.post(mutated.encode("utf-8", "surrogatepass"))
        counts[status] = counts.get(status, 0) + 1
        assert status in (202, 400), (status, mutated)
    assert world.applied == before
    assert world.active(bystander)
    assert counts.get(400, 0) >= 450, counts


# -- every adapter -----------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapter_answers(op: Provider, adapter: str) -> None:
    """202 (the session refused after it), 400 with err, 405 + Allow: POST, 413."""
    settings = {"ssf_issuer": op.issuer, "ssf_audience": AUDIENCE, "backend": "memory://"}
    with mounted(adapter, settings) as app:
        session = Sessions(settings).create("kai", idp_sid=f"ssf-{adapter}")
        assert app.status_of(session.session_id) == 200
        token = op.set_token(sub_id=op.session_subject(f"ssf-{adapter}"))
        ok = app.post(SSF_PATH, token.encode(), SET_TYPE)
        assert ok.status_code == 202, ok.text
        assert app.status_of(session.session_id) == 401
        assert app.post(SSF_PATH, token.encode(), SET_TYPE).status_code == 202

        bad = app.post(SSF_PATH, op.set_token(sub_id=op.user_subject("x"), aud="no").encode(),
                       SET_TYPE)  # fmt: skip
        assert bad.status_code == 400
        assert bad.json()["err"] == "invalid_audience"

        other = app.request("GET", SSF_PATH)
        assert (other.status_code, other.headers["allow"]) == (405, "POST")
        assert app.post(SSF_PATH, b"x" * (MAX_BODY + 1), SET_TYPE).status_code == 413
        valid = op.set_token(sub_id=op.user_subject("x")).encode()
        malformed = app.request("POST", SSF_PATH, body=valid, headers={
            "content-type": SET_TYPE, "content-length": f"+{len(valid) - 1}"})  # fmt: skip
        assert malformed.status_code == 400
        assert malformed.json()["err"] == "invalid_request"
