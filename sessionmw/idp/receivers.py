"""The two identity-provider routes of SPEC section 14, framework-free.

Each receiver turns a request (lower-cased headers, raw body read within 64 KiB) into
an :class:`~sessionmw.answers.Answer`, and a valid token into revocations:

1. the token is verified (:mod:`sessionmw.idp.tokens`, keys from
   :mod:`sessionmw.idp.jwks`) and its targets worked out (identity-provider session
   IDs, users); any defect is a 400 and nothing else happens;
2. its ``jti`` is claimed in the bus's replay guard (``oidc:<jti>`` / ``ssf:<jti>``),
   shared by every worker with a Redis or PostgreSQL bus, so a retry that lands on
   another worker is a duplicate: answered as a success, nothing applied twice;
3. the store is written first (:class:`Revoker`): every session created with that
   ``idp_sid`` revoked, or every active session of the user (what
   ``Sessions.revoke_idp_sid`` and ``Sessions.revoke_user`` do);
4. the resulting events are applied to this process's cache and published on the
   bus, so every worker refuses those sessions. If the store or the bus fails, the
   ``jti`` is released and the answer is a 503, so the provider's retry is applied.

The answers never depend on what a bad token holds, and no input makes a receiver
raise: whatever goes wrong past verification is a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sessionmw._log import INVALIDATION_APPLIED, INVALIDATION_REJECTED, get_logger, hash_id
from sessionmw.answers import BUS_UNAVAILABLE, Answer, error
from sessionmw.events import Event, SessionRevoked, UserSessionsRevoked, describe
from sessionmw.hook import Publisher
from sessionmw.idp.jwks import JWKSCache
from sessionmw.idp.tokens import Rules, TokenError, kid_of, verify

__all__ = [
    "BACKCHANNEL_LOGOUT",
    "CREDENTIAL_CHANGE",
    "LOGOUT_ACCEPTED",
    "LOGOUT_INVALID",
    "SESSION_REVOKED",
    "SET_ACCEPTED",
    "BackChannelLogout",
    "Revoker",
    "SecurityEventReceiver",
    "Targets",
    "set_error",
]

BACKCHANNEL_LOGOUT = "http://schemas.openid.net/event/backchannel-logout"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"

#: Seconds a logout token's ``iat`` may be off now, both ways.
IAT_WINDOW = 300.0
#: Longest identity-provider session ID or subject accepted.
MAX_SUBJECT = 1024

_NO_STORE = ("cache-control", "no-store")
_JSON = ("content-type", "application/json")
#: Back-Channel Logout 1.0, section 2.8: 200 on success, 400 when the logout failed;
#: responses carry ``Cache-Control: no-store``.
LOGOUT_ACCEPTED = Answer(200, b"", (_NO_STORE,), "ok")
LOGOUT_INVALID = error(400, "invalid_request", _NO_STORE)
#: RFC 8935, section 2.2: 202 once the SET is accepted (a duplicate too).
SET_ACCEPTED = Answer(202, b"", (), "ok")


def set_error(code: str, description: str) -> Answer:
    """RFC 8935, section 2.3: 400 with ``{"err": code, "description": ...}``."""
    body = json.dumps({"err": code, "description": description}).encode()
    return Answer(400, body, (_JSON,), code)


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _subject(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_SUBJECT:
        raise TokenError("invalid_request", f"{name} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no store or bus can hold it
        raise TokenError("invalid_request", f"{name} is not valid Unicode text") from None
    return value


@dataclass(frozen=True)
class Targets:
    """What a token revokes: sessions by identity-provider session ID, users."""

    idp_sids: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """For log lines: hashes only."""
        return {
            "idp_sids": [hash_id(s) for s in self.idp_sids],
            "users": [hash_id(u) for u in self.users],
        }


class Revoker:
    """Writes a token's revocations to the store, then applies and publishes them.

    ``store``: a writable session store (``ids_for_idp_sid``, ``revoke``,
    ``revoke_user``); ``apply``: applies events to this process's cache; ``bus``:
    publishes them to every other process and holds the replay guard; ``source``:
    ``oidc`` or ``ssf`` (replay keys, log lines).
    """

    def __init__(
        self,
        store: Any,
        apply: Callable[[Sequence[Event]], None],
        bus: Publisher,
        *,
        source: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._apply = apply
        self._bus = bus
        self.source = source
        self._clock = clock
        self._log = get_logger()

    def writes(self, targets: Targets) -> list[Event]:
        """Revoke in the store; the events every cache must apply.

        Every session of an ``idp_sid`` gets its event, revoked now or before: if an
        earlier delivery wrote the store but could not publish, this one still
        reaches every worker. A user gets a ``user_sessions_revoked`` watermark too,
        so caches also refuse sessions a lagging store replica still shows active.
        """
        store = self.store
        events: list[Event] = []
        for idp_sid in targets.idp_sids:
            ids = list(store.ids_for_idp_sid(idp_sid))
            for session_id in ids:
                store.revoke(session_id)
            events.extend(SessionRevoked(session_id) for session_id in ids)
        for user in targets.users:
            events.extend(SessionRevoked(session_id) for session_id in store.revoke_user(user))
            events.append(UserSessionsRevoked(user, self._clock()))
        return events

    def _key(self, jti: str) -> str:
        return f"{self.source}:{jti}"

    def _applied(self, events: list[Event], targets: Targets) -> None:
        self._log.info(
            INVALIDATION_APPLIED, source=self.source, events=describe(events), **targets.describe()
        )

    def _failed(self, exc: BaseException) -> Answer:
        self._log.error(
            INVALIDATION_REJECTED,
            source=self.source,
            reason="store_or_bus_unavailable",
            error=type(exc).__name__,
        )
        return BUS_UNAVAILABLE

    def duplicate(self) -> None:
        self._log.info(INVALIDATION_REJECTED, source=self.source, reason="duplicate")

    def deliver(self, jti: str, targets: Targets) -> Answer | None:
        """Claim, write, apply, publish. ``None`` when done (or a duplicate), else the
        503 to answer."""
        guard, key = self._bus.replay_guard, self._key(jti)
        try:
            if not guard.claim(key):
                self.duplicate()
                return None
        except Exception as exc:  # the guard's store is down: the provider retries
            return self._failed(exc)
        try:
            events = self.writes(targets)
            if events:
                self._apply(events)
                self._bus.publish(events)
        except Exception as exc:
            guard.release(key)
            return self._failed(exc)
        self._applied(events, targets)
        return None

    async def adeliver(self, jti: str, targets: Targets) -> Answer | None:
        """Like :meth:`deliver`, run whole in a worker thread: the guard, the store and
        the bus do blocking I/O, and a cancelled request cannot stop the delivery
        between the claim and the release."""
        return await asyncio.to_thread(self.deliver, jti, targets)


class _Receiver:
    """What both receivers share: read the token, verify it, deliver its targets."""

    source = ""
    #: The provider's discovery document: ``{issuer}/.well-known/{discovery}``.
    discovery = ""
    #: The ``typ`` header values accepted (lower case, without ``application/``).
    token_types: frozenset[str]
    #: Seconds ``iat`` may be off now, both ways (``None``: any age).
    iat_window: float | None
    accepted: Answer
    #: The answer for a malformed request (adapters use it for a bad Content-Length).
    malformed: Answer

    def __init__(
        self,
        *,
        issuer: str,
        audiences: Sequence[str],
        keys: JWKSCache,
        revoker: Revoker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.keys = keys
        self.revoker = revoker
        self.rules = Rules(issuer, tuple(audiences), self.token_types, self.iat_window)
        self._clock = clock
        self._log = get_logger()

    # -- per receiver --------------------------------------------------------------

    def token(self, headers: Mapping[str, str], body: bytes) -> str:
        """The token in the request, or :class:`TokenError`."""
        raise NotImplementedError

    def targets(self, claims: dict[str, Any]) -> Targets:
        """What the verified claims revoke, or :class:`TokenError`."""
        raise NotImplementedError

    def refusal(self, exc: TokenError) -> Answer:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------

    def _refuse(self, exc: TokenError) -> Answer:
        self._log.warning(
            INVALIDATION_REJECTED, source=self.source, reason=exc.code, problem=exc.reason
        )
        return self.refusal(exc)

    def _checked(self, token: str, keys: Any) -> tuple[str, Targets]:
        claims = verify(token, keys, self.rules, self._clock())
        return claims["jti"], self.targets(claims)

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one POST whose body was read within the limit (sync adapters)."""
        try:
            token = self.token(headers, body)
            jti, targets = self._checked(token, self.keys.keys(kid_of(token)))
        except TokenError as exc:
            return self._refuse(exc)
        return self.revoker.deliver(jti, targets) or self.accepted

    async def ahandle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one POST whose body was read within the limit (async adapters)."""
        try:
            token = self.token(headers, body)
            jti, targets = self._checked(token, await self.keys.akeys(kid_of(token)))
        except TokenError as exc:
            return self._refuse(exc)
        return await self.revoker.adeliver(jti, targets) or self.accepted


class BackChannelLogout(_Receiver):
    """OpenID Connect Back-Channel Logout 1.0: ``POST`` of a form with ``logout_token``.

    Valid token: signed by a key of the provider's JWKS with an asymmetric algorithm;
    ``iss`` the issuer; ``aud`` containing one of ``audiences``; ``iat`` within 5
    minutes of now, both ways; ``exp``, if present, not past; ``events`` holding the
    back-channel-logout member (a JSON object); ``sid`` or ``sub``; no ``nonce``; a
    ``jti``. ``typ``, if present, ``logout+jwt`` (or the generic ``JWT``).

    ``sid`` revokes the sessions created with that ``idp_sid``; ``sub`` without
    ``sid`` revokes every session of user ``sub``. Answers: 200 (duplicates too), 400
    ``invalid_request`` for any invalid token or body, 503 when the store or bus
    failed (the provider may retry).
    """

    source = "oidc"
    discovery = "openid-configuration"
    accepted = LOGOUT_ACCEPTED
    malformed = LOGOUT_INVALID
    token_types = frozenset({"logout+jwt", "jwt"})
    iat_window = IAT_WINDOW

    def token(self, headers: Mapping[str, str], body: bytes) -> str:
        if _media_type(headers) != "application/x-www-form-urlencoded":
            raise TokenError("invalid_request", "not a form body")
        try:
            fields = parse_qs(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=True,
                max_num_fields=32,
                errors="strict",
            )
        except (UnicodeError, ValueError):
            raise TokenError("invalid_request", "malformed form body") from None
        values = fields.get("logout_token", [])
        if len(values) != 1 or not values[0]:
            raise TokenError("invalid_request", "exactly one logout_token is needed")
        return values[0]

    def targets(self, claims: dict[str, Any]) -> Targets:
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT), dict):
            raise TokenError("invalid_request", "not a back-channel logout event")
        if "nonce" in claims:
            raise TokenError("invalid_request", "a logout token carries no nonce")
        sid, sub = claims.get("sid"), claims.get("sub")
        if sid is not None:
            return Targets(idp_sids=(_subject(sid, "sid"),))
        if sub is not None:
            return Targets(users=(_subject(sub, "sub"),))
        raise TokenError("invalid_request", "neither sid nor sub")

    def refusal(self, exc: TokenError) -> Answer:
        return LOGOUT_INVALID


class SecurityEventReceiver(_Receiver):
    """Shared Signals push delivery (RFC 8935) of CAEP events.

    Body: a Security Event Token, ``Content-Type: application/secevent+jwt``; verified
    like a logout token (signature, ``iss``, ``aud``, ``exp`` when present, ``jti``)
    except for its age: transmitters retry, so an old ``iat`` is no reason to refuse.
    ``typ``, if present, ``secevent+jwt`` (or ``JWT``).

    Events acted on: CAEP ``session-revoked`` (subject a ``complex`` one with a
    ``session`` of format ``opaque``: the sessions created with that ``idp_sid``; an
    ``iss_sub`` subject, or a ``complex`` one with only a ``user``: every session of
    that user) and ``credential-change`` (always the user). The subject is the SET's
    top-level ``sub_id`` (RFC 9493). Other event types (a stream verification event)
    are acknowledged and ignored. Answers: 202 (duplicates too); 400 with
    ``{"err": ..., "description": ...}``; 503 when the store or bus failed.
    """

    source = "ssf"
    discovery = "ssf-configuration"
    accepted = SET_ACCEPTED
    malformed = set_error("invalid_request", "malformed request")
    token_types = frozenset({"secevent+jwt", "jwt"})
    iat_window = None

    def token(self, headers: Mapping[str, str], body: bytes) -> str:
        if _media_type(headers) != "application/secevent+jwt":
            raise TokenError("invalid_request", "Content-Type must be application/secevent+jwt")
        try:
            return body.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TokenError("invalid_request", "the body is not a compact JWT") from None

    def targets(self, claims: dict[str, Any]) -> Targets:
        events = claims.get("events")
        if not isinstance(events, dict) or not events:
            raise TokenError("invalid_request", "no events")
        kinds = tuple(kind for kind in (SESSION_REVOKED, CREDENTIAL_CHANGE) if kind in events)
        if not kinds:
            return Targets()  # nothing this receiver acts on: acknowledged
        if not all(isinstance(events[kind], dict) for kind in kinds):
            raise TokenError("invalid_request", "an event's value must be an object")
        idp_sid, user = _sub_id(claims.get("sub_id"))
        sids: list[str] = []
        users: list[str] = []
        for kind in kinds:
            if kind == SESSION_REVOKED and idp_sid is not None:
                sids.append(idp_sid)
            elif user is not None:
                users.append(user)
            else:
                raise TokenError("invalid_request", "the subject names no user")
        return Targets(tuple(dict.fromkeys(sids)), tuple(dict.fromkeys(users)))

    def refusal(self, exc: TokenError) -> Answer:
        return set_error(exc.code, exc.reason)


def _sub_id(value: object) -> tuple[str | None, str | None]:
    """``(idp_sid, user)`` of an RFC 9493 subject identifier (``iss_sub`` or a
    ``complex`` one with ``session`` and/or ``user``)."""
    if not isinstance(value, dict):
        raise TokenError("invalid_request", "sub_id must be a subject identifier object")
    kind = value.get("format")
    if kind == "iss_sub":
        return None, _iss_sub(value)
    if kind != "complex":
        raise TokenError("invalid_request", "unsupported subject format")
    session, user = value.get("session"), value.get("user")
    idp_sid = None
    if session is not None:
        if not isinstance(session, dict) or session.get("format") != "opaque":
            raise TokenError("invalid_request", "the session subject must be opaque")
        idp_sid = _subject(session.get("id"), "session id")
    named = None
    if user is not None:
        if not isinstance(user, dict) or user.get("format") != "iss_sub":
            if idp_sid is None:
                raise TokenError("invalid_request", "the user subject must be iss_sub")
        else:
            named = _iss_sub(user)
    if idp_sid is None and named is None:
        raise TokenError("invalid_request", "the subject names no session and no user")
    return idp_sid, named


def _iss_sub(value: dict[str, Any]) -> str:
    _subject(value.get("iss"), "subject iss")
    return _subject(value.get("sub"), "subject sub")
