"""The signed invalidation hook, framework-free (SPEC section 8, hook).

Adapters translate a request into "method, lower-cased headers, body bytes" and an
:class:`HookResponse` back into their framework's response. The body must be read
through :class:`BodyLimit` so a body larger than :data:`MAX_BODY` is refused before
it is read whole or hashed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from standardwebhooks.webhooks import Webhook

from sessionmw._log import INVALIDATION_APPLIED, INVALIDATION_REJECTED, get_logger
from sessionmw.errors import BusUnavailable, InvalidPayload
from sessionmw.events import Event, describe, parse_batch

if TYPE_CHECKING:
    from sessionmw.gate import Gate

MAX_BODY = 64 * 1024

_JSON = ("content-type", "application/json")


class HookResponse(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (_JSON,)


def _error(status: int, code: str, *extra: tuple[str, str]) -> HookResponse:
    return HookResponse(status, json.dumps({"error": code}).encode(), (_JSON, *extra))


METHOD_NOT_ALLOWED = _error(405, "method_not_allowed", ("allow", "POST"))
TOO_LARGE = _error(413, "payload_too_large")
INVALID_SIGNATURE = _error(401, "invalid_signature")
INVALID_PAYLOAD = _error(400, "invalid_payload")
BUS_UNAVAILABLE = _error(503, "bus_unavailable", ("retry-after", "1"))
DUPLICATE = HookResponse(200, json.dumps({"applied": 0, "duplicate": True}).encode())


class BodyLimit:
    """Counts body bytes as they stream in; refuses a declared or actual excess.

    >>> limit = BodyLimit("12")
    >>> limit.refused, limit.feed(b"x" * 13)
    (False, False)
    """

    __slots__ = ("_chunks", "_size", "limit", "refused")

    def __init__(self, content_length: str | None, limit: int = MAX_BODY) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.refused = False
        if content_length is not None:
            text = content_length.strip()
            # A Content-Length we cannot read is refused like an oversized one:
            # the body's real size is unknowable without reading it.
            if not text.isdigit() or int(text) > limit:
                self.refused = True

    def feed(self, chunk: bytes) -> bool:
        """Add a chunk; False once the body is over the limit (stop reading then)."""
        self._size += len(chunk)
        if self._size > self.limit:
            self.refused = True
            self._chunks.clear()
            return False
        if chunk:
            self._chunks.append(chunk)
        return True

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)


class InvalidationHook:
    """Verifies a signed batch, drops replays, applies and publishes the events."""

    def __init__(self, gate: Gate, secrets: Sequence[str]) -> None:
        self._gate = gate
        self._verifiers = [Webhook(secret) for secret in secrets]
        self._log = get_logger()

    def _verified(self, headers: Mapping[str, str], body: bytes) -> bool:
        wanted = {
            name: headers.get(name, "")
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        for verifier in self._verifiers:
            try:
                verifier.verify(body, wanted, json_parse=False)
            except Exception:  # noqa: S112 - every failure of the package means "not signed by this secret"
                continue
            return True
        return False

    def _check(self, headers: Mapping[str, str], body: bytes) -> HookResponse | list[Event]:
        if not self._verified(headers, body):
            self._log.warning(INVALIDATION_REJECTED, reason="invalid_signature")
            return INVALID_SIGNATURE
        try:
            return parse_batch(body)
        except InvalidPayload as exc:
            self._log.warning(INVALIDATION_REJECTED, reason="invalid_payload", problem=str(exc))
            return INVALID_PAYLOAD

    def _duplicate(self) -> HookResponse:
        self._log.info(INVALIDATION_REJECTED, reason="duplicate")
        return DUPLICATE

    def _applied(self, events: list[Event]) -> HookResponse:
        self._log.info(INVALIDATION_APPLIED, source="hook", events=describe(events))
        return HookResponse(200, json.dumps({"applied": len(events)}).encode())

    def _unpublished(self) -> HookResponse:
        self._log.error(INVALIDATION_REJECTED, reason="bus_unavailable")
        return BUS_UNAVAILABLE

    def handle(self, headers: Mapping[str, str], body: bytes) -> HookResponse:
        """Process a POST whose body was read within the limit (sync adapters)."""
        events = self._check(headers, body)
        if isinstance(events, HookResponse):
            return events
        guard, webhook_id = self._gate.bus.replay_guard, headers["webhook-id"]
        try:
            if not guard.claim(webhook_id):
                return self._duplicate()
            self._gate.apply_events(events)
            self._gate.bus.publish(events)
        except BusUnavailable:
            # Not delivered everywhere: forget the ID so the producer's retry is applied.
            guard.release(webhook_id)
            return self._unpublished()
        return self._applied(events)

    async def ahandle(self, headers: Mapping[str, str], body: bytes) -> HookResponse:
        """Process a POST whose body was read within the limit (async adapters)."""
        events = self._check(headers, body)
        if isinstance(events, HookResponse):
            return events
        guard, webhook_id = self._gate.bus.replay_guard, headers["webhook-id"]
        try:
            if not await guard.aclaim(webhook_id):
                return self._duplicate()
            self._gate.apply_events(events)
            await self._gate.bus.apublish(events)
        except BusUnavailable:
            await guard.arelease(webhook_id)
            return self._unpublished()
        return self._applied(events)
