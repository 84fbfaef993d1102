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

from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any

from sessionmw._compat import require_extra

with require_extra("werkzeug", "wsgi", feature="sessionmw.wsgi"):
    from werkzeug.wrappers import Response

from sessionmw._environ import environ_key, serve_hook
from sessionmw.gate import INVALID, MISSING, UNAVAILABLE, Gate, Rejection, gate_for
from sessionmw.hook import HookResponse
from sessionmw.settings import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ENVIRON_KEY", "DeviceSessionMiddleware"]

#: Where the record of a valid session is stored in the environ.
ENVIRON_KEY = "sessionmw.session"


def _response(answer: Rejection | HookResponse) -> Response:
    return Response(answer.body, status=answer.status, headers=list(answer.headers))


class DeviceSessionMiddleware:
    """Wrap ``app`` so that every request needs a valid device session.

    ``settings`` is a :class:`~sessionmw.Settings` or a mapping of setting names;
    keyword arguments (any key of SPEC section 4) override it. Bad configuration
    raises :class:`~sessionmw.ConfigError` here, at start-up. Middlewares configured
    alike share one gate (cache, bus subscriber) per process, also with the other
    adapters. Safe to build before a pre-forking server forks: the bus subscriber
    starts on the first request in each worker.
    """

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self.settings = Settings.coerce(settings, **kwargs)
        self.gate: Gate = gate_for(self.settings)
        # Everything the request path needs, bound once.
        self._key = environ_key(self.gate.header)
        self._hook_path = self.gate.hook_path
        self._exempt_methods = self.gate.exempt_methods
        self._exempt_prefixes = self.gate.exempt_prefixes or None
        self._hit = self.gate.hit
        self._check = self.gate.check
        # Rejections are few and fixed: build their WSGI responses once.
        self._answers: dict[Rejection, Response] = {
            rejection: _response(rejection) for rejection in (MISSING, INVALID, UNAVAILABLE)
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        gate = self.gate
        if not gate.started:
            gate.start()
        path = environ.get("PATH_INFO", "")
        if path == self._hook_path:
            return self._hook(environ, start_response)
        if environ.get("REQUEST_METHOD") in self._exempt_methods or (
            self._exempt_prefixes is not None and path.startswith(self._exempt_prefixes)
        ):
            return self.app(environ, start_response)
        value = environ.get(self._key)
        record = self._hit(value)
        if record is None:
            outcome = self._check(value)
            if isinstance(outcome, Rejection):
                answer = self._answers.get(outcome) or _response(outcome)
                return answer(environ, start_response)
            record = outcome
        environ[ENVIRON_KEY] = record
        return self.app(environ, start_response)

    def _hook(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        assert self.gate.hook is not None
        answer = serve_hook(
            self.gate.hook,
            environ,
            environ.get("wsgi.input") or BytesIO(),
            terminated=bool(environ.get("wsgi.input_terminated")),
        )
        return _response(answer)(environ, start_response)
