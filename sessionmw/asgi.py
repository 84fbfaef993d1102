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
   paths more broadly than needed (``exempt_paths`` match whole path segments:
   ``/healthz`` covers ``/healthz/db`` but not ``/healthzz``).

Configuration errors: Starlette and FastAPI build their middleware inside the first
ASGI call (the lifespan, under a server), where an exception would be mistaken for
"lifespan unsupported" and the app would serve 500s. Built there, the middleware
keeps a :class:`~sessionmw.ConfigError` (or a missing driver's ``ImportError``) and
fails the lifespan start-up with it, so ``uvicorn module:app`` exits naming the key;
built anywhere else, it raises at once.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from sessionmw._body import BodyLimit
from sessionmw._compat import require_extra
from sessionmw.answers import METHOD_NOT_ALLOWED, Answer
from sessionmw.errors import ConfigError
from sessionmw.gate import Gate, gate_for
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings, SettingsKeywords

if TYPE_CHECKING:
    from starlette.routing import Route
    from typing_extensions import Unpack

    from sessionmw.idp import Receiver
    from sessionmw.sessions import Sessions

__all__ = ["DeviceSessionMiddleware", "InvalidationApp", "invalidation_route", "sessions"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ACTIVE = SessionStatus.ACTIVE

#: Close code of a refused websocket handshake (RFC 6455: policy violation).
WS_POLICY_VIOLATION = 1008


class _Encoded:
    """An :class:`~sessionmw.answers.Answer` as ASGI messages: two ``send`` calls."""

    __slots__ = ("body_message", "start_message")

    def __init__(self, answer: Answer) -> None:
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
        raw.append((b"content-length", str(len(answer.body)).encode()))
        # Messages are copied per send (servers may mutate them); their parts are not.
        self.start_message = {
            "type": "http.response.start",
            "status": answer.status,
            "headers": raw,
        }
        self.body_message = {"type": "http.response.body", "body": answer.body}

    async def __call__(self, send: Send) -> None:
        await send(dict(self.start_message))
        await send(dict(self.body_message))


_ENCODED: dict[Answer, _Encoded] = {}


async def send_answer(answer: Answer, send: Send) -> None:
    """Send a fixed answer; the handful of constant answers are encoded once."""
    encoded = _ENCODED.get(answer)
    if encoded is None:
        encoded = _Encoded(answer)
        if len(_ENCODED) < 64:
            _ENCODED[answer] = encoded
    await encoded(send)


def _decoded_headers(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }


async def read_body(scope: Scope, receive: Receive) -> BodyLimit | None:
    """The request body within the limit (``refusal`` set when over it or malformed);
    ``None`` when the client went away."""
    declared = None
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            if declared is not None:  # two Content-Length headers: malformed
                declared = b"x"
                break
            declared = value
    limit = BodyLimit(declared)
    if limit.refused:
        return limit
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect: nobody is left to answer
        if not limit.feed(message.get("body", b"")):
            return limit
        more = message.get("more_body", False)
    return limit


class InvalidationApp:
    """The signed invalidation hook as an ASGI app (SPEC section 8).

    Refuses non-POST methods (405 + ``Allow: POST``), refuses a body over 64 KiB
    while it streams in (413, declared or chunked: the excess is never read whole or
    hashed) or with a malformed ``Content-Length`` (400), then hands the raw body to
    the gate's hook. ``receiver`` serves another internal route the same way (the
    identity-provider routes of SPEC section 14, :mod:`sessionmw.idp`).
    """

    def __init__(self, gate: Gate, receiver: Receiver | None = None) -> None:
        if receiver is None:
            if gate.hook is None:
                raise ConfigError(
                    "invalidation_secret",
                    "the invalidation hook needs invalidation_secret or invalidation_public_key",
                )
            receiver = gate.hook
        self.gate = gate
        self._hook = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
            return
        self.gate.start()
        if scope["method"] != "POST":
            await send_answer(METHOD_NOT_ALLOWED, send)
            return
        body = await read_body(scope, receive)
        if body is None:
            return
        if body.refusal is not None:
            refusal = body.refusal
            if refusal.status == 400:  # a malformed Content-Length, in the route's own words
                refusal = getattr(self._hook, "malformed", refusal)
            await send_answer(refusal, send)
            return
        answer = await self._hook.ahandle(_decoded_headers(scope), body.body)
        await send_answer(answer, send)


def invalidation_route(settings_or_gate: Settings | Gate | None = None, path: str | None = None,
                       **kwargs: Any) -> Route:  # fmt: skip
    """A Starlette ``Route`` serving the hook, for apps that mount it themselves.

    ``settings_or_gate`` is a :class:`~sessionmw.Settings` (or keyword settings), the
    same the middleware was given, so both share one cache. ``path`` defaults to the
    ``invalidation_path`` setting; another path *moves* the hook: the middleware of
    that gate then serves it there and no longer at ``invalidation_path``. Needs
    ``invalidation_secret`` or ``invalidation_public_key``.

    >>> routes = [invalidation_route(settings, "/hooks/sessions")]  # doctest: +SKIP
    """
    with require_extra("starlette", "starlette", feature="invalidation_route"):
        from starlette.routing import Route

    if isinstance(settings_or_gate, Gate):
        gate = settings_or_gate
    else:
        gate = gate_for(Settings.coerce(settings_or_gate, **kwargs))
    app = InvalidationApp(gate)
    if path is not None:
        gate.hook_path = path
    return Route(gate.hook_path or gate.settings.invalidation_path, app)


def _mark_coroutine_function(func: Callable[..., Any]) -> None:
    """Make ``inspect``/``asyncio.iscoroutinefunction`` true for ``func`` (what uvicorn,
    Starlette and asgiref look at to tell an ASGI 3 app), as asgiref's
    ``markcoroutinefunction`` does."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # Python 3.12+
        mark(func)
    else:
        func._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


def _built_lazily() -> bool:
    """True when a Starlette/FastAPI app is building its middleware stack right now
    (inside its first ASGI call)."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_code.co_name == "build_middleware_stack":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class DeviceSessionMiddleware:
    """Checks the device session header of every HTTP request and websocket handshake.

    Settings are the keys of SPEC section 4, as a :class:`~sessionmw.Settings`, a
    mapping, or keyword arguments; they are validated here, once
    (:class:`~sessionmw.ConfigError` naming the key, with the closest valid key for a
    misspelt one). Middlewares configured alike share one gate, hence one cache and
    one bus subscriber.

    A valid request reaches the app with the :class:`~sessionmw.SessionRecord` at
    ``scope["state"]["device_session"]`` (``request.state.device_session``). Other
    requests get 401 ``missing_session`` / ``invalid_session`` or 503
    ``session_backend_unavailable``; a websocket handshake is closed with code 1008.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | Mapping[str, Any] | None = None,
        **keywords: Unpack[SettingsKeywords],
    ) -> None:
        self.app = app
        #: A start-up error kept for the lifespan (see the module docs), else None.
        self.startup_error: Exception | None = None
        try:
            self.settings = Settings.coerce(settings, **keywords)
            self.gate = gate_for(self.settings)
        except (ConfigError, ImportError) as exc:
            if not _built_lazily():
                raise
            self.startup_error = exc
            return
        gate = self.gate
        _BUILT.add(self)
        self.hook_app = InvalidationApp(gate) if gate.hook is not None else None
        # The app of every internal route (gate.routes), by its receiver.
        self._route_apps: dict[Any, InvalidationApp] = {
            receiver: InvalidationApp(gate, receiver)
            for receiver in (gate.oidc, gate.ssf)
            if receiver is not None
        }
        if self.hook_app is not None:
            self._route_apps[gate.hook] = self.hook_app
        # Everything the request path needs, bound once.
        self._header = gate.header.encode("latin-1")
        self._exempt_methods = gate.exempt_methods
        self._exempt_path = gate.exempt_path
        self._cache = gate.cache
        # Whether a hit records its time (in the entry's CLOCK mark: see MemoryCache.hit).
        self._track = gate.activity is not None
        self._acheck = gate.acheck

    # -- helpers (off the hot path) ----------------------------------------------

    def _header_value(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
        """The session header's value and whether it was repeated (names compared
        case-insensitively)."""
        wanted = self._header
        found: bytes | None = None
        for name, value in headers:
            if name.lower() == wanted:
                if found is not None:
                    return None, True
                found = value
        # latin-1 keeps every byte; anything outside ASCII then fails the ID check.
        return (None if found is None else found.decode("latin-1")), False

    async def _refuse_startup(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = self.startup_error
        assert error is not None
        if scope["type"] == "lifespan":
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": f"sessionmw: {error}"})
            return
        raise error

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
        if self._exempt_path is not None and self._exempt_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        self.gate.start()
        value, repeated = self._header_value(scope["headers"])
        outcome = await self._acheck(value, repeated=repeated)
        if isinstance(outcome, Answer):
            # The handshake must be read before it is answered (ASGI spec).
            await receive()
            await send(
                {"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": outcome.code}
            )
            return
        _attach(scope, outcome)
        await self.app(scope, receive, send)

    # -- the request path ----------------------------------------------------------

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Handle one connection. A plain function returning the awaitable to run (the
        app's own, on the hit path): an ``async def`` here would add a coroutine frame
        to every request for nothing. Marked as a coroutine function (below), so
        servers that inspect the app still see an ASGI 3 application."""
        if scope["type"] != "http" or self.startup_error is not None:
            return self._not_http(scope, receive, send)
        gate = self.gate
        if not gate.started:
            gate.start()
        routes = gate.routes  # the hook and the identity-provider routes, if any
        if routes is not None and (served := routes.get(scope["path"])) is not None:
            return self._route_apps[served](scope, receive, send)
        # Exempt methods and paths are decided on the full path: a valid cached
        # session passes either way, and the hit path stays short.

        # The header. ASGI servers send lower-case names (uvicorn, hypercorn, daphne,
        # granian; HTTP/2 requires it), so an exact comparison finds it; a repeated
        # header, or one in another case, takes the full path. A plain loop is the
        # cheapest scan CPython has for a list of pairs (cheaper than dict(headers)).
        wanted = self._header
        found: bytes | None = None
        for name, raw in scope["headers"]:
            if name == wanted:
                if found is not None:
                    return self._full(scope, receive, send)  # repeated
                found = raw
        if found is None:
            return self._full(scope, receive, send)
        try:
            value = found.decode()
        except UnicodeDecodeError:  # not an ID: the full path says so (and logs it)
            return self._full(scope, receive, send)
        # The hit, inlined (MemoryCache.hit is the reference: keep the two
        # alike): fresh, active, unexpired, with no log line and no format check (the
        # cache only holds IDs that passed it).
        cache = self._cache
        try:
            entry = cache._data[value]
        except KeyError:
            return self._full(scope, receive, send, value)
        else:
            now = cache._clock()
            if now - entry.fetched < cache._pos_fresh:
                record = entry.record
                if (
                    record is not None
                    and record.status is _ACTIVE
                    and (
                        (expires := record.expires_at) is None or expires > now + cache._wall_offset
                    )
                ):
                    entry.ref = now if self._track else True
                    cache._allowed_hits += 1
                    try:
                        scope["state"]["device_session"] = record
                    except KeyError:  # a server without the lifespan state extension
                        scope["state"] = {"device_session": record}
                    return self.app(scope, receive, send)
        return self._full(scope, receive, send, value)

    async def _full(
        self, scope: Scope, receive: Receive, send: Send, value: str | None = None
    ) -> None:
        """Everything but a hit: an exempt request, a missing, repeated or other-case
        header, a miss, a refusal (with its log line), a backend that is down."""
        if scope["method"] in self._exempt_methods or (
            self._exempt_path is not None and self._exempt_path(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        if value is None:
            found, repeated = self._header_value(scope["headers"])
            outcome = await self._acheck(found, repeated=repeated)
        else:
            outcome = await self._acheck(value)
        if isinstance(outcome, Answer):
            await send_answer(outcome, send)
            return
        _attach(scope, outcome)
        await self.app(scope, receive, send)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.startup_error is not None:
            await self._refuse_startup(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)


_mark_coroutine_function(DeviceSessionMiddleware.__call__)

_BUILT: weakref.WeakSet[DeviceSessionMiddleware] = weakref.WeakSet()


def sessions(request: Any) -> Sessions:
    """The :class:`~sessionmw.Sessions` of the gate guarding this request's app.

    ``request``: a Starlette ``Request`` (or ``WebSocket``) or an ASGI scope; works in
    exempt routes too. The gate is found from the app's middleware list
    (``app.add_middleware(DeviceSessionMiddleware, ...)``), else it is the one
    middleware built in this process.
    """
    from sessionmw.sessions import Sessions

    scope = getattr(request, "scope", request)
    app = scope.get("app") if isinstance(scope, Mapping) else None
    for entry in getattr(app, "user_middleware", ()):
        if getattr(entry, "cls", None) is DeviceSessionMiddleware:
            args, kwargs = tuple(getattr(entry, "args", ())), dict(getattr(entry, "kwargs", {}))
            return Sessions(Settings.coerce(*args, **kwargs))
    gates = {id(m.gate): m.gate for m in list(_BUILT) if m.startup_error is None}
    if len(gates) == 1:
        return Sessions(next(iter(gates.values())))
    raise LookupError(
        "no DeviceSessionMiddleware found for this app: add it with app.add_middleware(), "
        "or build sessionmw.Sessions(settings) with the middleware's settings"
    )


def _attach(scope: Scope, record: SessionRecord) -> None:
    state = scope.get("state")
    if state is None:
        scope["state"] = {"device_session": record}
    else:
        state["device_session"] = record
