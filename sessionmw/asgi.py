"""Pure ASGI adapter: Starlette, FastAPI and any other ASGI application.

::

    from starlette.applications import Starlette
    from sessionmw.asgi import DeviceSessionMiddleware

    app = Starlette(routes=[...])
    app.add_middleware(
        DeviceSessionMiddleware,
        backend="sqlite:///sessions.db",
        exempt_paths=["/healthz"],
        invalidation_secret="whsec_...",
    )

    # in an endpoint:
    record = request.state.device_session  # a sessionmw.SessionRecord

The middleware is a plain ASGI callable, not a Starlette HTTP-middleware subclass: it never reads
the body of a normal request, never wraps the response, and runs the app in the
caller's task, so streaming responses, background tasks and context variables
behave exactly as without it. Importing this module does not import Starlette; only
:func:`invalidation_route` needs it.

.. warning::
   The session header is trusted as sent by the client. Put the middleware
   outermost (before anything that may answer on its own), and do not exempt
   paths more broadly than needed: ``exempt_paths`` are *prefixes*.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from sessionmw.cache import MISS
from sessionmw.errors import ConfigError
from sessionmw.gate import INVALID, MAX_ID_LENGTH, MISSING, Gate, Rejection, gate_for
from sessionmw.hook import METHOD_NOT_ALLOWED, TOO_LARGE, BodyLimit, HookResponse
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings

if TYPE_CHECKING:
    from starlette.routing import Route

__all__ = ["DeviceSessionMiddleware", "InvalidationApp", "invalidation_route"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ACTIVE = SessionStatus.ACTIVE
_MAX_ID = MAX_ID_LENGTH
_now = time.time

#: Close code of a refused websocket handshake (RFC 6455: policy violation).
WS_POLICY_VIOLATION = 1008


def _raw_headers(
    status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> list[tuple[bytes, bytes]]:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    return raw


class _Answer:
    """A fixed response, encoded once: two ``send`` calls and nothing else."""

    __slots__ = ("body_message", "start_message")

    def __init__(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        # Messages are rebuilt per send (servers may mutate them); their parts are not.
        self.start_message = {
            "type": "http.response.start",
            "status": status,
            "headers": _raw_headers(status, headers, body),
        }
        self.body_message = {"type": "http.response.body", "body": body}

    async def __call__(self, send: Send) -> None:
        await send(dict(self.start_message))
        await send(dict(self.body_message))


def _answer_for(response: Rejection | HookResponse) -> _Answer:
    return _Answer(response.status, response.headers, response.body)


_ANSWERS: dict[Rejection | HookResponse, _Answer] = {}


def _answer(response: Rejection | HookResponse) -> _Answer:
    # Rejections and the hook's fixed answers are a handful of constants: encode each once.
    answer = _ANSWERS.get(response)
    if answer is None:
        answer = _answer_for(response)
        if len(_ANSWERS) < 64:
            _ANSWERS[response] = answer
    return answer


class InvalidationApp:
    """The signed invalidation hook as an ASGI app (SPEC section 8).

    Refuses non-POST methods (405 + ``Allow: POST``), refuses a body over 64 KiB
    while it streams in (413, declared or chunked: the excess is never read whole or
    hashed), then hands the raw body to the gate's hook.
    """

    def __init__(self, gate: Gate) -> None:
        if gate.hook is None:
            raise ConfigError("invalidation_secret", "the invalidation hook needs a secret")
        self.gate = gate
        self._hook = gate.hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
            return
        self.gate.start()
        if scope["method"] != "POST":
            await _answer(METHOD_NOT_ALLOWED)(send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            headers[raw_name.decode("latin-1").lower()] = raw_value.decode("latin-1")
        limit = BodyLimit(headers.get("content-length"))
        if limit.refused:
            await _answer(TOO_LARGE)(send)
            return
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: nobody is left to answer
            if not limit.feed(message.get("body", b"")):
                await _answer(TOO_LARGE)(send)
                return
            more = message.get("more_body", False)
        response = await self._hook.ahandle(headers, limit.body)
        await _answer(response)(send)


def invalidation_route(settings_or_gate: Settings | Gate | None = None, path: str | None = None,
                       **kwargs: Any) -> Route:  # fmt: skip
    """A Starlette ``Route`` serving the hook, for apps that mount it themselves.

    ``settings_or_gate`` is a :class:`~sessionmw.Settings` (or keyword settings), the
    same the middleware was given, so both share one cache. ``path`` defaults to the
    ``invalidation_path`` setting. Needs ``invalidation_secret``.

    >>> routes = [invalidation_route(settings, "/hooks/sessions")]  # doctest: +SKIP
    """
    from starlette.routing import Route

    if isinstance(settings_or_gate, Gate):
        gate = settings_or_gate
    else:
        gate = gate_for(Settings.coerce(settings_or_gate, **kwargs))
    return Route(path or gate.settings.invalidation_path, InvalidationApp(gate))


class DeviceSessionMiddleware:
    """Checks the device session header of every HTTP request and websocket handshake.

    Settings are the keys of SPEC section 4, as a :class:`~sessionmw.Settings`, a
    mapping, or keyword arguments; they are validated here, once
    (:class:`~sessionmw.ConfigError` on a bad one). Middlewares configured alike
    share one gate, hence one cache and one bus subscriber.

    A valid request reaches the app with the :class:`~sessionmw.SessionRecord` at
    ``scope["state"]["device_session"]`` (``request.state.device_session``). Other
    requests get 401 ``missing_session`` / ``invalid_session`` or 503
    ``session_backend_unavailable``; a websocket handshake is closed with code 1008.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | Mapping[str, Any] | None = None,
        *,
        header: str | None = None,
        backend: Any = None,
        max_entries: int | None = None,
        ttl: float | None = None,
        negative_ttl: float | None = None,
        stale_if_error: float | None = None,
        backend_timeout: float | None = None,
        exempt_paths: Iterable[str] | str | None = None,
        exempt_methods: Iterable[str] | str | None = None,
        invalidation_path: str | None = None,
        invalidation_secret: Iterable[str] | str | None = None,
        bus: str | None = None,
        stream: str | None = None,
        bus_outage_ttl: float | None = None,
    ) -> None:
        # Explicit keywords (not **kwargs) so type checkers accept
        # ``Middleware(DeviceSessionMiddleware, ...)``; None means "not given".
        given = {
            "header": header,
            "backend": backend,
            "max_entries": max_entries,
            "ttl": ttl,
            "negative_ttl": negative_ttl,
            "stale_if_error": stale_if_error,
            "backend_timeout": backend_timeout,
            "exempt_paths": exempt_paths,
            "exempt_methods": exempt_methods,
            "invalidation_path": invalidation_path,
            "invalidation_secret": invalidation_secret,
            "bus": bus,
            "stream": stream,
            "bus_outage_ttl": bus_outage_ttl,
        }
        self.app = app
        self.settings = Settings.coerce(
            settings, **{key: value for key, value in given.items() if value is not None}
        )
        self.gate = gate = gate_for(self.settings)
        self.hook_app = InvalidationApp(gate) if gate.hook is not None else None
        # Everything the request path needs, bound once.
        self._hook_path = gate.hook_path
        self._header = gate.header.encode("latin-1")
        self._header_len = len(self._header)
        self._exempt_methods = gate.exempt_methods
        self._exempt_prefixes = gate.exempt_prefixes or None
        self._peek = gate.cache.peek
        self._acheck = gate.acheck

    # -- helpers (off the hot path) ----------------------------------------------

    def _header_value(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
        """The session header's value and whether it was repeated."""
        wanted, size = self._header, self._header_len
        found: bytes | None = None
        for name, value in headers:
            # ASGI servers send lower-cased names; compare case-insensitively anyway.
            if name == wanted or (len(name) == size and name.lower() == wanted):
                if found is not None:
                    return None, True
                found = value
        # latin-1 keeps every byte; anything outside ASCII then fails the ID check.
        return (None if found is None else found.decode("latin-1")), False

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = self.gate

        async def wrapped() -> Message:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                gate.start()
            elif kind == "lifespan.shutdown":
                await gate.astop()
            return message

        await self.app(scope, wrapped, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if self._exempt_prefixes is not None and path.startswith(self._exempt_prefixes):
            await self.app(scope, receive, send)
            return
        self.gate.start()
        value, repeated = self._header_value(scope["headers"])
        outcome = await self._acheck(value, repeated=repeated)
        if isinstance(outcome, Rejection):
            # The handshake must be read before it is answered (ASGI spec).
            await receive()
            await send(
                {"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": outcome.code}
            )
            return
        _attach(scope, outcome)
        await self.app(scope, receive, send)

    # -- the request path ----------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            elif scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        gate = self.gate
        if not gate.started:
            gate.start()
        path = scope["path"]
        if path == self._hook_path and self.hook_app is not None:
            await self.hook_app(scope, receive, send)
            return
        if scope["method"] in self._exempt_methods or (
            self._exempt_prefixes is not None and path.startswith(self._exempt_prefixes)
        ):
            await self.app(scope, receive, send)
            return

        # Header scan, inlined. ASGI servers send lower-case names (uvicorn, hypercorn,
        # daphne, granian; HTTP/2 requires it; Starlette's own Headers relies on it),
        # so an exact comparison is the scan; only when that finds nothing are names
        # compared case-insensitively (see _header_value).
        wanted = self._header
        found: bytes | None = None
        for name, raw in scope["headers"]:
            if name == wanted:
                if found is not None:
                    await _answer(self._repeated())(send)
                    return
                found = raw
        if found is None:
            value, repeated = self._header_value(scope["headers"])
            if value is None or repeated:
                await _answer(self._repeated() if repeated else self._missing())(send)
                return
            found = value.encode("latin-1")
        # latin-1 keeps every byte; anything outside ASCII then fails the ID check.
        value = found.decode("latin-1")

        # The cache hit on an active session is decided here, with no await, no
        # logging and no format check: the cache only ever holds IDs that passed
        # the gate's format check, so a hit proves the ID well-formed.
        record = self._peek(value) if len(value) <= _MAX_ID else MISS
        if (
            record.__class__ is SessionRecord
            and record.status is _ACTIVE
            and ((expires_at := record.expires_at) is None or expires_at > _now())
        ):
            gate.allowed += 1
        else:
            # Everything else (format check, miss, revoked, expired, backend down,
            # the log line) is the gate's business.
            outcome = await self._acheck(value)
            if isinstance(outcome, Rejection):
                await _answer(outcome)(send)
                return
            record = outcome
        state = scope.get("state")
        if state is None:
            scope["state"] = {"device_session": record}
        else:
            state["device_session"] = record
        await self.app(scope, receive, send)

    def _missing(self) -> Rejection:
        return self.gate._reject(MISSING, "missing")

    def _repeated(self) -> Rejection:
        return self.gate._reject(INVALID, "malformed")


def _attach(scope: Scope, record: SessionRecord) -> None:
    state = scope.get("state")
    if state is None:
        scope["state"] = {"device_session": record}
    else:
        state["device_session"] = record
