"""The signed invalidation hook, framework-free (SPEC section 8, hook).

Adapters translate a request into "lower-cased headers, body bytes" (the body read
through :class:`~sessionmw._body.BodyLimit`, so an oversized one is refused before
it is read whole or hashed) and send back the :class:`~sessionmw.answers.Answer`
that :meth:`InvalidationHook.handle` returns.

The hook knows nothing of gates: it is given the function that applies a batch in
this process and the bus that publishes it to the others (and remembers
``webhook-id`` values through the bus's replay guard).

Signatures are checked over the raw body bytes, as Standard Webhooks defines them
(``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``, or ``v1a,`` + base64
ed25519 signature of the same bytes), so a signed body that is not UTF-8 is a payload
problem (400), not a signature problem. Each scheme is checked only against its own
keys: a hook with only ``whsec_`` secrets ignores ``v1a`` entries, one with only
``whpk_`` public keys ignores ``v1`` entries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from sessionmw._log import INVALIDATION_APPLIED, INVALIDATION_REJECTED, get_logger
from sessionmw.answers import (
    BUS_UNAVAILABLE,
    DUPLICATE,
    INVALID_PAYLOAD,
    INVALID_SIGNATURE,
    Answer,
    applied,
)
from sessionmw.errors import ConfigError, InvalidPayload
from sessionmw.events import Event, describe, parse_batch, received

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from sessionmw.replay import ReplayGuard

__all__ = ["TOLERANCE", "InvalidationHook", "Publisher", "public_key", "secret_key"]

#: Seconds a signature's timestamp may be off, both ways (Standard Webhooks: 5 minutes).
TOLERANCE = 300
#: Longest accepted ``webhook-id`` (Standard Webhooks IDs are short; the replay
#: memory is bounded by count times this).
MAX_WEBHOOK_ID = 256
_MAX_SIGNATURES = 16
#: ``v1a`` entries tried per request. An ed25519 check costs about 0.1 ms (it hashes
#: the whole body again for each entry and key, where HMAC hashes it once per key),
#: so an unsigned caller must not make the hook run 16 of them per key.
_MAX_V1A = 4
_ED25519_SIGNATURE_BYTES = 64


class Publisher(Protocol):
    """What the hook needs of a bus: publishing, and the replay guard (both blocking;
    :meth:`InvalidationHook.ahandle` calls them from a worker thread)."""

    @property
    def replay_guard(self) -> ReplayGuard: ...

    def publish(self, events: Sequence[Event]) -> None: ...


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (validated by Settings already)."""
    body = secret.removeprefix("whsec_")
    return base64.b64decode(body + "=" * (-len(body) % 4))


def public_key(key: str) -> Ed25519PublicKey:
    """The ed25519 key of a ``whpk_`` public key (format validated by Settings already).

    Needs the ``cryptography`` package; without it, or for bytes that are no ed25519
    key, raises :class:`~sessionmw.ConfigError` naming ``invalidation_public_key``.
    """
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise ConfigError(
            "invalidation_public_key",
            "checking v1a (ed25519) signatures needs the 'cryptography' package: "
            "pip install cryptography",
        ) from None
    body = key.removeprefix("whpk_")
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(body, validate=True))
    except ValueError:
        raise ConfigError(
            "invalidation_public_key", "each key must be 'whpk_' + base64 of a 32-byte ed25519 key"
        ) from None


def _signatures(header: str) -> tuple[list[bytes], list[bytes]]:
    """The decoded ``v1`` and ``v1a`` entries of a ``webhook-signature`` header.
    Unknown versions and entries that are not strict base64 are skipped."""
    v1: list[bytes] = []
    v1a: list[bytes] = []
    for item in header.split(" ")[:_MAX_SIGNATURES]:
        version, _, encoded = item.partition(",")
        if version == "v1":
            into = v1
        elif version == "v1a":
            into = v1a
        else:
            continue
        try:
            into.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return v1, v1a


class InvalidationHook:
    """Verifies a signed batch, drops replays, applies and publishes the events.

    ``secrets``: the ``whsec_`` secrets any of which may sign (``v1`` entries).
    ``public_keys``: the ``whpk_`` keys whose ``v1a`` (ed25519) signatures are
    accepted too. ``apply``: applies a validated batch to this process's cache.
    ``bus``: publishes the batch to every other process and holds the replay guard.
    ``clock``: wall-clock seconds.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        public_keys: Sequence[str] = (),
        apply: Callable[[Sequence[Event]], None],
        bus: Publisher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = [secret_key(secret) for secret in secrets]
        self._public_keys = [public_key(key) for key in public_keys]
        self._apply = apply
        self._bus = bus
        self._clock = clock
        self._log = get_logger()

    # -- verification ------------------------------------------------------------

    def _verified(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        webhook_id = headers.get("webhook-id", "")
        timestamp = headers.get("webhook-timestamp", "")
        signature = headers.get("webhook-signature", "")
        if not (webhook_id and signature) or len(webhook_id) > MAX_WEBHOOK_ID:
            return False
        # A plain decimal of sane length: no signs, spaces, exponents or other digits.
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return False
        if abs(int(timestamp) - now) > TOLERANCE:
            return False
        try:
            prefix = f"{webhook_id}.{timestamp}.".encode()
        except UnicodeEncodeError:  # a lone surrogate in the ID: nobody signed that
            return False
        signed = prefix + body
        v1, v1a = _signatures(signature)
        for key in self._keys:
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            for candidate in v1:
                if hmac.compare_digest(expected, candidate):
                    return True
        return bool(v1a and self._public_keys) and self._ed25519_verified(v1a, signed)

    def _ed25519_verified(self, candidates: list[bytes], signed: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature  # present: keys were loaded

        for candidate in candidates[:_MAX_V1A]:
            if len(candidate) != _ED25519_SIGNATURE_BYTES:
                continue
            for key in self._public_keys:
                try:
                    key.verify(candidate, signed)
                except InvalidSignature:
                    continue
                return True
        return False

    def _check(self, headers: Mapping[str, str], body: bytes) -> Answer | list[Event]:
        now = self._clock()
        if not self._verified(headers, body, now):
            self._log.warning(INVALIDATION_REJECTED, reason="invalid_signature")
            return INVALID_SIGNATURE
        try:
            return received(parse_batch(body), now)
        except InvalidPayload as exc:
            self._log.warning(INVALIDATION_REJECTED, reason="invalid_payload", problem=str(exc))
            return INVALID_PAYLOAD

    # -- outcomes ----------------------------------------------------------------

    def _duplicate(self) -> Answer:
        self._log.info(INVALIDATION_REJECTED, reason="duplicate")
        return DUPLICATE

    def _applied(self, events: list[Event]) -> Answer:
        self._log.info(INVALIDATION_APPLIED, source="hook", events=describe(events))
        return applied(len(events))

    def _unpublished(self, exc: BaseException) -> Answer:
        self._log.error(INVALIDATION_REJECTED, reason="bus_unavailable", error=type(exc).__name__)
        return BUS_UNAVAILABLE

    # -- entry points ------------------------------------------------------------

    def _deliver(self, webhook_id: str, events: list[Event]) -> Answer:
        """Claim the ID, apply, publish; on failure release the ID (the producer retries)."""
        guard = self._bus.replay_guard
        try:
            if not guard.claim(webhook_id):
                return self._duplicate()
        except Exception as exc:  # the guard's store is down: the producer retries
            return self._unpublished(exc)
        try:
            self._apply(events)
            self._bus.publish(events)
        except Exception as exc:
            # Not delivered everywhere: forget the ID so the producer's retry is applied.
            guard.release(webhook_id)
            return self._unpublished(exc)
        return self._applied(events)

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """Process a POST whose body was read within the limit (sync adapters)."""
        events = self._check(headers, body)
        if isinstance(events, Answer):
            return events
        return self._deliver(headers["webhook-id"], events)

    async def ahandle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """Process a POST whose body was read within the limit (async adapters).

        The check is CPU work done here; the delivery runs whole in one worker thread,
        as the guard and the bus do blocking I/O, and a cancelled request then cannot
        stop it between the claim and the release.
        """
        events = self._check(headers, body)
        if isinstance(events, Answer):
            return events
        return await asyncio.to_thread(self._deliver, headers["webhook-id"], events)
