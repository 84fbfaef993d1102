"""WSGI middleware (werkzeug): the session gate for any WSGI application.

>>> from sessionmw.wsgi import DeviceSessionMiddleware
>>> def app(environ, start_response):
...     record = environ["sessionmw.session"]
...     start_response("200 OK", [("Content-Type", "text/plain")])
...     return [record.user_id.encode()]
>>> app = DeviceSessionMiddleware(app, backend="memory://", exempt_paths=["/healthz"])

Requests without a valid session never reach the wrapped app: they get the JSON
answers of SPEC section 7. The record of a valid session is at
``environ["sessionmw.session"]``. With ``invalidation_secret`` set, the middleware
also serves the signed invalidation hook at ``invalidation_path``.

.. warning::
   The session ID is read from the environ key the server stores the header under
   (``HTTP_X_DEVICE_SESSION_ID``). Servers join a repeated header's values with a
   comma, which the gate rejects; a proxy in front that rewrites the header must
   not merge a client-sent copy into a trusted one.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any

from sessionmw._compat import require_extra

with require_extra("werkzeug", "wsgi", feature="sessionmw.wsgi"):
    from werkzeug.wrappers import Response

from sessionmw._environ import environ_key, serve_hook
from sessionmw.answers import INVALID, MISSING, UNAVAILABLE, Answer
from sessionmw.gate import Gate, gate_for
from sessionmw.records import SessionStatus
from sessionmw.settings import Settings, SettingsKeywords

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

    from sessionmw.idp import Receiver
    from sessionmw.sessions import Sessions

__all__ = ["ENVIRON_KEY", "SESSIONS_KEY", "DeviceSessionMiddleware", "sessions"]

_ACTIVE = SessionStatus.ACTIVE

#: Where the record of a valid session is stored in the environ.
ENVIRON_KEY = "sessionmw.session"
#: Where every request's environ gets the gate's :class:`~sessionmw.Sessions`.
SESSIONS_KEY = "sessionmw.sessions"


def sessions(environ: Mapping[str, Any]) -> Sessions:
    """The :class:`~sessionmw.Sessions` of the middleware that handled this request
    (exempt requests included)."""
    found = environ.get(SESSIONS_KEY)
    if found is not None:
        return found  # type: ignore[no-any-return]
    # A cached hit skips the environ key while this process has only one gate.
    gates = {id(built.gate): built for built in list(_BUILT)}
    if len(gates) == 1 and ENVIRON_KEY in environ:
        return next(iter(gates.values())).sessions
    raise LookupError("this request did not pass through sessionmw's WSGI middleware")


_BUILT: weakref.WeakSet[DeviceSessionMiddleware] = weakref.WeakSet()


def _note_built(middleware: DeviceSessionMiddleware) -> None:
    """Register a middleware; once the process has more than one gate, every
    middleware names its own in the environ on the hit path too."""
    _BUILT.add(middleware)
    several = len({id(built.gate) for built in list(_BUILT)}) > 1
    for built in list(_BUILT):
        built._several = several


def _response(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, headers=list(answer.headers))


class DeviceSessionMiddleware:
    """Wrap ``app`` so that every request needs a valid device session.

    ``settings`` is a :class:`~sessionmw.Settings` or a mapping of setting names;
    keyword arguments (any key of SPEC section 4) override it. Bad configuration
    raises :class:`~sessionmw.ConfigError` here, at start-up, naming the key (and the
    closest valid one for a misspelt key). Middlewares configured alike share one
    gate (cache, bus subscriber) per process, also with the other adapters. Safe to
    build before a pre-forking server forks: the bus subscriber starts on the first
    request in each worker.
    """

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings | Mapping[str, Any] | None = None,
        **keywords: Unpack[SettingsKeywords],
    ) -> None:
        self.app = app
        self.settings = Settings.coerce(settings, **keywords)
        self.gate: Gate = gate_for(self.settings)
        from sessionmw.sessions import Sessions

        self.sessions = Sessions(self.gate)
        # Everything the request path needs, bound once.
        self._key = environ_key(self.gate.header)
        self._exempt_methods = self.gate.exempt_methods
        self._exempt_path = self.gate.exempt_path
        self._cache = self.gate.cache
        # Whether a hit records its time (in the entry's CLOCK mark: see MemoryCache.hit).
        self._track = self.gate.activity is not None
        self._check = self.gate.check
        self._several = False
        _note_built(self)
        # Refusals are few and fixed: build their WSGI responses once.
        self._answers: dict[Answer, Response] = {
            answer: _response(answer) for answer in (MISSING, INVALID, UNAVAILABLE)
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        gate = self.gate
        if not gate.started:
            gate.start()
        if self._several:  # else sessions(environ) finds the one gate without it
            environ[SESSIONS_KEY] = self.sessions
        routes = gate.routes  # the hook and the identity-provider routes, if any
        if routes is not None and (served := routes.get(environ.get("PATH_INFO", ""))) is not None:
            return self._hook(environ, start_response, served)
        # The hit, inlined (MemoryCache.hit is the reference: keep the two
        # alike): fresh, active, unexpired, with no format check (the cache only holds
        # IDs that passed it). Exempt methods and paths are decided on the full path:
        # a valid cached session passes either way.
        cache = self._cache
        try:
            value = environ[self._key]
            entry = cache._data[value]
        except KeyError:  # no header, or not cached
            return self._full(environ, start_response, environ.get(self._key))
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
                    environ[ENVIRON_KEY] = record
                    return self.app(environ, start_response)
        return self._full(environ, start_response, value)

    def _full(
        self, environ: WSGIEnvironment, start_response: StartResponse, value: str | None
    ) -> Iterable[bytes]:
        """Everything but a hit: an exempt request, a missing header, a miss, a refusal
        (with its log line), a backend that is down. The gate decides."""
        environ[SESSIONS_KEY] = self.sessions
        if environ.get("REQUEST_METHOD") in self._exempt_methods or (
            self._exempt_path is not None and self._exempt_path(environ.get("PATH_INFO", ""))
        ):
            return self.app(environ, start_response)
        outcome = self._check(value)
        if isinstance(outcome, Answer):
            answer = self._answers.get(outcome) or _response(outcome)
            return answer(environ, start_response)
        environ[ENVIRON_KEY] = outcome
        return self.app(environ, start_response)

    def _hook(
        self, environ: WSGIEnvironment, start_response: StartResponse, served: Receiver
    ) -> Iterable[bytes]:
        answer = serve_hook(
            served,
            environ,
            environ.get("wsgi.input") or BytesIO(),
            terminated=bool(environ.get("wsgi.input_terminated")),
        )
        return _response(answer)(environ, start_response)
