"""Flask extension: the session gate as a ``before_request`` check.

>>> from flask import Flask, g
>>> from sessionmw.contrib.flask import SessionMW, exempt
>>> app = Flask(__name__)
>>> app.config["SESSIONMW_BACKEND"] = "memory://"
>>> sessionmw = SessionMW(app)
>>> @app.get("/whoami")
... def whoami():
...     return {"user_id": g.device_session.user_id}
>>> @app.get("/healthz")
... @exempt
... def healthz():
...     return "ok"

Settings come from flat config keys ``SESSIONMW_<KEY>`` (``SESSIONMW_TTL``,
``SESSIONMW_EXEMPT_PATHS``, ...); an unknown ``SESSIONMW_`` key is a
:class:`~sessionmw.ConfigError` naming it. With ``SESSIONMW_INVALIDATION_SECRET``
set, a blueprint named ``sessionmw`` serves the invalidation hook; with
``SESSIONMW_OIDC_ISSUER`` or ``SESSIONMW_SSF_ISSUER``, the same blueprint serves the
identity-provider routes (``oidc_backchannel_logout``, ``ssf``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any, TypeVar

from sessionmw._compat import require_extra

with require_extra("flask", "flask", feature="sessionmw.contrib.flask"):
    from flask import Blueprint, Flask, Response, current_app, g, request

from sessionmw._environ import environ_key, serve_hook
from sessionmw.answers import Answer
from sessionmw.errors import ConfigError
from sessionmw.gate import Gate, gate_for
from sessionmw.hook import InvalidationHook
from sessionmw.settings import Settings, unknown_key

if TYPE_CHECKING:
    from sessionmw.idp import Receiver

__all__ = ["CONFIG_PREFIX", "SessionMW", "SessionMWState", "exempt"]

CONFIG_PREFIX = "SESSIONMW_"
EXTENSION_KEY = "sessionmw"
_EXEMPT_ATTR = "sessionmw_exempt"
# The methods of the hook's URL rule (for url_for and url_map listings). Requests to
# the hook path are answered before routing matters, whatever their method: 405 with
# ``Allow: POST`` for all but POST, TRACE and PROPFIND included.
_HOOK_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

F = TypeVar("F", bound=Callable[..., Any])


def exempt(view: F) -> F:
    """Mark a view as not needing a device session (like ``csrf_exempt``).

    Put it under the route decorator, so the route registers the marked function::

        @app.get("/healthz")
        @exempt
        def healthz(): ...
    """
    setattr(view, _EXEMPT_ATTR, True)
    return view


def settings_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``SESSIONMW_<KEY>`` entries of a Flask config, by setting name."""
    known = set(Settings.keys())
    values: dict[str, Any] = {}
    for name, value in config.items():
        if not isinstance(name, str) or not name.startswith(CONFIG_PREFIX):
            continue
        key = name[len(CONFIG_PREFIX) :].lower()
        if key not in known:
            raise _unknown_config_key(name, key, known)
        values[key] = value
    return values


def _unknown_config_key(name: str, key: str, known: set[str]) -> ConfigError:
    """A misspelt ``SESSIONMW_`` key, suggesting the closest config key by its own name.

    Matched on the part after the prefix (the shared prefix would make every key look
    close), suggested as the config key to write: ``SESSIONMW_TLL`` -> ``SESSIONMW_TTL``.
    """
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if not close:
        return unknown_key(key, known, name=name)
    return ConfigError(
        name, f"unknown setting (did you mean {CONFIG_PREFIX + close[0].upper()!r}?)"
    )


def _response(answer: Answer) -> Response:
    return current_app.response_class(
        answer.body, status=answer.status, headers=list(answer.headers)
    )


def _serve_hook(hook: InvalidationHook | Receiver, environ: Mapping[str, Any]) -> Response:
    # The server's raw stream, not request.stream: the body limit and the
    # Content-Length check are ours, before Flask or werkzeug parse anything.
    answer = serve_hook(
        hook,
        environ,
        environ.get("wsgi.input") or BytesIO(),
        terminated=bool(environ.get("wsgi.input_terminated")),
    )
    return _response(answer)


class SessionMWState:
    """What the extension keeps per app, at ``app.extensions["sessionmw"]``."""

    __slots__ = ("extension", "gate", "sessions", "settings")

    def __init__(self, extension: SessionMW, settings: Settings, gate: Gate) -> None:
        from sessionmw.sessions import Sessions

        self.extension = extension
        self.settings = settings
        self.gate = gate
        #: The gate's :class:`~sessionmw.Sessions` (login, logout, devices).
        self.sessions = Sessions(gate)


class SessionMW:
    """The Flask extension: ``SessionMW(app)`` or ``SessionMW()`` then ``init_app(app)``.

    ``settings`` (a :class:`~sessionmw.Settings` or a mapping, e.g.
    ``Settings.from_env()``) is the base; the app's ``SESSIONMW_*`` config keys
    override it, and keyword ``overrides`` override both. The record of a valid
    session is ``flask.g.device_session`` (``None`` on exempt requests).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: Settings | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self._settings = settings
        self._overrides = overrides
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the settings, register the check and (with a secret) the hook."""
        base = Settings.coerce(self._settings)
        changes = {**settings_from_config(app.config), **self._overrides}
        settings = base.with_changes(**changes) if changes else base
        gate = gate_for(settings)
        app.extensions[EXTENSION_KEY] = SessionMWState(self, settings, gate)

        hook_endpoint = None
        # The hook and the identity-provider routes (SPEC section 14), one blueprint.
        internal = [
            (path, name, receiver)
            for path, name, receiver in (
                (gate.hook_path, "invalidation_hook", gate.hook),
                (gate.settings.oidc_logout_path, "oidc_backchannel_logout", gate.oidc),
                (gate.settings.ssf_path, "ssf", gate.ssf),
            )
            if receiver is not None and path is not None
        ]
        if internal:
            blueprint = Blueprint(EXTENSION_KEY, __name__)
            for path, name, receiver in internal:

                def view(receiver: Any = receiver) -> Response:
                    return _serve_hook(receiver, request.environ)

                blueprint.add_url_rule(
                    path,
                    name,
                    exempt(view),
                    methods=_HOOK_METHODS,
                    provide_automatic_options=False,
                )
            app.register_blueprint(blueprint)
            if gate.hook is not None:
                hook_endpoint = f"{EXTENSION_KEY}.invalidation_hook"

        key = environ_key(gate.header)
        view_functions = app.view_functions
        exempt_methods, exempt_path = gate.exempt_methods, gate.exempt_path
        hit, check = gate.hit, gate.check

        def check_session() -> Response | None:
            if not gate.started:
                gate.start()
            # One proxy resolution each: this runs on every request.
            req = request._get_current_object()  # type: ignore[attr-defined]
            app_globals = g._get_current_object()
            app_globals.device_session = None
            environ = req.environ
            routes = gate.routes
            if routes is not None and (served := routes.get(environ.get("PATH_INFO"))) is not None:
                # Every method, routed or not (TRACE, PROPFIND...): the hook (or an
                # identity-provider route) answers for itself (405 with Allow: POST),
                # never the session check.
                return _serve_hook(served, environ)
            rule = req.url_rule
            if rule is not None and (
                rule.endpoint == hook_endpoint
                or getattr(view_functions.get(rule.endpoint), _EXEMPT_ATTR, False)
            ):
                return None
            if environ.get("REQUEST_METHOD") in exempt_methods or (
                exempt_path is not None and exempt_path(environ.get("PATH_INFO", ""))
            ):
                return None
            value = environ.get(key)
            record = hit(value)
            if record is None:
                outcome = check(value)
                if isinstance(outcome, Answer):
                    return _response(outcome)
                record = outcome
            app_globals.device_session = record
            return None

        app.before_request(check_session)
