"""FastAPI dependencies: the checked session and the app's ``Sessions`` (SPEC section 13).

::

    from fastapi import FastAPI
    from sessionmw.asgi import DeviceSessionMiddleware
    from sessionmw.contrib.fastapi import DeviceSession, SessionsDep

    app = FastAPI()
    app.add_middleware(DeviceSessionMiddleware, exempt_paths=["/docs", "/openapi.json"])

    @app.get("/whoami")
    async def whoami(session: DeviceSession) -> dict[str, str]:
        return {"user_id": session.user_id, "session_id": session.session_id}

    @app.post("/logout")
    async def logout(session: DeviceSession, sessions: SessionsDep) -> dict[str, bool]:
        return {"revoked": await sessions.arevoke(session.session_id)}

``DeviceSession`` is a security dependency built on FastAPI's ``APIKeyHeader``: the
OpenAPI document declares an ``apiKey`` scheme ``in: header`` named by the ``header``
setting, every route that takes it references that scheme, and ``/docs`` shows an
"Authorize" button whose value "Try it out" sends as the header.

Where the record comes from:

* With :class:`~sessionmw.asgi.DeviceSessionMiddleware` in front, the middleware has
  checked the request and attached the record (``request.state.device_session``);
  the dependency returns it, with no second check.
* Otherwise (no middleware, or a path the middleware exempts) the dependency checks
  the header itself through the gate of the app's middleware (found in
  ``app.user_middleware``) or, without one, the gate of ``Settings.from_env()``, and
  refuses with the section 7 answers: same status, same JSON body bytes, same
  ``WWW-Authenticate`` / ``Retry-After`` headers as the middleware.

How a refusal becomes the exact body: the dependency raises :class:`SessionRejected`
(not an ``HTTPException``, whose FastAPI handler would answer ``{"detail": ...}`` and
whose status handlers would apply), after making sure the app's
``ExceptionMiddleware`` has a handler for it. Starlette hands that middleware's
handler table to the request in ``scope["starlette.exception_handlers"]``, and both
the app-level and the route-level exception wrappers look handlers up there by the
exception's class, so the handler is added to that table once per app (with
``setdefault``: a handler the app registered itself for ``SessionRejected`` wins).
Nothing needs registering by hand.

.. warning::
   Without the middleware only the routes that declare ``DeviceSession`` are
   checked: a path no route serves answers FastAPI's 404, so an unauthenticated
   client can tell which routes exist. Use the middleware where that matters (SPEC
   section 7 answers every path alike).

``local_swagger_ui(app)`` serves Swagger UI's files from the ``swagger-ui-bundle``
package instead of a CDN, for machines without internet access.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from sessionmw._compat import require_extra

with require_extra("fastapi", "fastapi", feature="sessionmw.contrib.fastapi"):
    from fastapi import Depends, FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.openapi.models import APIKey, APIKeyIn
    from fastapi.security import APIKeyHeader
    from starlette.exceptions import HTTPException, WebSocketException
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import BaseRoute, Mount, Route
    from starlette.staticfiles import StaticFiles

from sessionmw.answers import Answer
from sessionmw.asgi import WS_POLICY_VIOLATION, DeviceSessionMiddleware
from sessionmw.errors import ConfigError
from sessionmw.gate import Gate, exempt_matcher, gate_for
from sessionmw.records import SessionRecord
from sessionmw.sessions import Sessions
from sessionmw.settings import ENV_PREFIX, Settings

__all__ = [
    "DeviceSession",
    "DeviceSessionHeader",
    "SessionRejected",
    "SessionsDep",
    "app_sessions",
    "device_session",
    "local_swagger_ui",
]

#: The OpenAPI name of the security scheme (``components.securitySchemes``).
SCHEME_NAME = "DeviceSession"
_STATE_KEY = "device_session"
_HANDLERS_KEY = "starlette.exception_handlers"


class SessionRejected(Exception):
    """A request refused by :data:`DeviceSession`; ``answer`` is the section 7 answer.

    Its handler (installed on the app automatically) sends ``answer`` as is. To answer
    differently, register your own: ``app.add_exception_handler(SessionRejected, ...)``.
    """

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.code)
        self.answer = answer


async def answer_rejection(request: Request, exc: Exception) -> Response:
    """The exception handler of :class:`SessionRejected`: the gate's answer, byte for byte."""
    assert isinstance(exc, SessionRejected)
    answer = exc.answer
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


# -- which gate serves an app ---------------------------------------------------------

# app -> the settings of its gate (the middleware's, else the environment's), resolved
# at the first request that needs them and kept for the app's life, like the
# middleware's own settings.
_APP_SETTINGS: weakref.WeakKeyDictionary[Any, Settings] = weakref.WeakKeyDictionary()


def _middleware_settings(app: Any) -> Settings | None:
    """The settings of the ``DeviceSessionMiddleware`` added to ``app``, if any."""
    for entry in getattr(app, "user_middleware", ()):
        if getattr(entry, "cls", None) is DeviceSessionMiddleware:
            args, kwargs = tuple(getattr(entry, "args", ())), dict(getattr(entry, "kwargs", {}))
            return Settings.coerce(*args, **kwargs)
    return None


def _app_settings(conn: HTTPConnection) -> Settings:
    app = conn.scope.get("app")
    if app is None:
        return Settings.from_env()
    try:
        return _APP_SETTINGS[app]
    except KeyError:
        pass
    except TypeError:  # an app that cannot be weakly referenced: resolve each time
        return _middleware_settings(app) or Settings.from_env()
    settings = _APP_SETTINGS[app] = _middleware_settings(app) or Settings.from_env()
    return settings


def _gate(conn: HTTPConnection) -> Gate:
    gate = gate_for(_app_settings(conn))
    if not gate.started:
        gate.start()  # what the middleware does on its first request
    return gate


def _header_value(conn: HTTPConnection, wanted: str) -> tuple[str | None, bool]:
    """The header's value (``None``: absent) and whether it was repeated, names compared
    case-insensitively, bytes decoded as latin-1 as the middleware does (a non-ASCII
    byte then fails the ID check)."""
    name_bytes = wanted.lower().encode("latin-1")
    found: bytes | None = None
    for name, value in conn.scope["headers"]:
        if name.lower() == name_bytes:
            if found is not None:
                return None, True
            found = value
    return (None if found is None else found.decode("latin-1")), False


def _refuse(conn: HTTPConnection, answer: Answer) -> Exception:
    """The exception that makes the framework send ``answer``."""
    if conn.scope["type"] == "websocket":
        # Closed before accept with the middleware's code and reason.
        return WebSocketException(WS_POLICY_VIOLATION, answer.code)
    handlers = conn.scope.get(_HANDLERS_KEY)
    if handlers is None:  # pragma: no cover - every Starlette app has an ExceptionMiddleware
        # Nobody would handle SessionRejected: keep the status and headers at least.
        return HTTPException(answer.status, answer.code, dict(answer.headers))
    handlers[0].setdefault(SessionRejected, answer_rejection)
    return SessionRejected(answer)


# -- the dependencies --------------------------------------------------------------------


class DeviceSessionHeader(APIKeyHeader):
    """The device session as a FastAPI security dependency (an ``APIKeyHeader``).

    Called with a request, it returns the checked :class:`~sessionmw.SessionRecord`
    or raises so that the client gets the section 7 answer (see the module docs).
    ``auto_error`` is off: the header is read and judged here, never by
    ``APIKeyHeader``'s own 403/401.

    ``settings``: fix this dependency's settings (its header name in OpenAPI and the
    gate it checks with when no middleware attached a record). Without them (what
    :data:`DeviceSession` does), the gate is the app's middleware's, else the
    environment's, and the OpenAPI header name is ``Settings.from_env().header``: an
    app whose middleware is given another ``header`` in code declares its own
    ``Annotated[SessionRecord, Depends(DeviceSessionHeader(settings))]``.
    """

    def __init__(
        self,
        settings: Settings | Mapping[str, Any] | None = None,
        *,
        scheme_name: str = SCHEME_NAME,
        description: str | None = None,
    ) -> None:
        self.settings = None if settings is None else Settings.coerce(settings)
        self._description = description or (
            "Device session ID, sent in this header on every request. "
            "401 when missing or invalid, 503 when the session store is unavailable."
        )
        self._models: dict[str, APIKey] = {}
        super().__init__(
            name=self._header_name(),
            scheme_name=scheme_name,
            description=self._description,
            auto_error=False,
        )

    # APIKeyBase stores its OpenAPI model as an attribute at construction; here the
    # header name may come from settings only known later, so it is read when FastAPI
    # builds the document.
    @property  # type: ignore[override]
    def model(self) -> APIKey:
        name = self._header_name()
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = APIKey(
                **{"in": APIKeyIn.header},  # type: ignore[arg-type]
                name=name,
                description=self._description,
            )
        return model

    @model.setter
    def model(self, value: APIKey) -> None:
        self._models[value.name] = value

    def _header_name(self) -> str:
        if self.settings is not None:
            return self.settings.header
        try:
            return Settings.from_env().header
        except ConfigError:
            # The document still renders; the same error stops the app at its first check.
            return Settings().header

    def _gate(self, conn: HTTPConnection) -> Gate:
        if self.settings is None:
            return _gate(conn)
        gate = gate_for(self.settings)
        if not gate.started:
            gate.start()
        return gate

    async def __call__(self, request: HTTPConnection) -> SessionRecord:  # type: ignore[override]
        state = request.scope.get("state")
        if state is not None:
            record = state.get(_STATE_KEY)
            if isinstance(record, SessionRecord):
                return record  # checked by the middleware in front
        gate = self._gate(request)
        value, repeated = _header_value(request, gate.header)
        outcome = await gate.acheck(value, repeated=repeated)
        if isinstance(outcome, Answer):
            raise _refuse(request, outcome)
        if state is not None:
            state[_STATE_KEY] = outcome
        else:
            request.scope["state"] = {_STATE_KEY: outcome}
        return outcome


def _check_environment() -> None:
    """Validate ``SESSIONMW_*`` variables when this module is imported, i.e. while the
    app starts: without the middleware, :data:`DeviceSession` reads them, and a typo or
    a bad value must stop the app there, naming the key, not answer its first checked
    request with a 500. Without any such variable there is nothing to check."""
    if any(name.startswith(ENV_PREFIX) for name in os.environ):
        Settings.from_env()


_check_environment()

#: The dependency behind :data:`DeviceSession`; the key for ``app.dependency_overrides``.
device_session = DeviceSessionHeader()

#: The checked :class:`~sessionmw.SessionRecord` of the request, as a route parameter
#: type: ``async def whoami(session: DeviceSession)``.
DeviceSession = Annotated[SessionRecord, Depends(device_session)]


async def app_sessions(request: HTTPConnection) -> Sessions:
    """The :class:`~sessionmw.Sessions` of the gate guarding this app: the middleware's
    when one was added with ``app.add_middleware``, else the one of
    ``Settings.from_env()``. Works in exempt routes too."""
    return Sessions(_gate(request))


#: The app's :class:`~sessionmw.Sessions` as a route parameter type (section 11).
SessionsDep = Annotated[Sessions, Depends(app_sessions)]


# -- Swagger UI without a CDN ------------------------------------------------------------

_BUNDLED_VERSION = re.compile(r"swagger-ui-(\d+)\.")


def _bundled_assets() -> Path:
    with require_extra("swagger_ui_bundle", "fastapi", feature="local_swagger_ui"):
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    return Path(str(swagger_ui_path))


def local_swagger_ui(
    app: FastAPI,
    *,
    docs_url: str | None = None,
    assets: str | os.PathLike[str] | None = None,
    relabel_openapi: bool | None = None,
) -> None:
    """Serve ``/docs`` with Swagger UI's files from this server, not from a CDN.

    Replaces FastAPI's page at ``docs_url`` (default ``app.docs_url``, else ``/docs``)
    by one loading its script, style sheet and icon from ``{docs_url}/assets``, where
    the files of ``assets`` (default: the ``swagger-ui-bundle`` package, installed
    with ``sessionmw[fastapi]``) are served with ``StaticFiles``. The online
    validator badge is switched off too, so the page makes no request off the host.

    The Swagger UI of ``swagger-ui-bundle`` (4.x) only renders OpenAPI 3.0 documents,
    and FastAPI writes 3.1. With ``relabel_openapi`` (default: on for a 4.x bundle and
    a 3.1 app) the page reads a copy of the app's document labelled ``3.0.3`` from
    ``{docs_url}/openapi.json`` (FastAPI's documented ``openapi_version`` workaround,
    limited to this page); ``app.openapi_url`` keeps serving the real one.

    Every URL it adds is below ``docs_url``: exempting ``docs_url`` (and
    ``app.openapi_url``) in ``exempt_paths`` covers them. When the app already has a
    ``DeviceSessionMiddleware`` whose ``exempt_paths`` leave them checked, this raises
    :class:`~sessionmw.ConfigError` naming ``exempt_paths``.
    """
    docs_url = (docs_url or app.docs_url or "/docs").rstrip("/") or "/docs"
    openapi_url = app.openapi_url
    if not openapi_url:
        raise ValueError("local_swagger_ui needs the app's OpenAPI document (openapi_url)")
    directory = Path(assets) if assets is not None else _bundled_assets()
    if not (directory / "swagger-ui-bundle.js").is_file():
        raise ValueError(f"no swagger-ui-bundle.js in {directory}")
    settings = _middleware_settings(app)
    if settings is not None:
        exempt = exempt_matcher(settings.exempt_paths)
        for path in (docs_url, openapi_url):
            if exempt is None or not exempt(path):
                raise ConfigError("exempt_paths", f"{path} must be exempt for the API docs to load")
    if relabel_openapi is None:
        found = _BUNDLED_VERSION.search(directory.name)
        relabel_openapi = (
            found is not None and int(found.group(1)) < 5 and app.openapi_version.startswith("3.1")
        )
    assets_url = f"{docs_url}/assets"
    spec_url = f"{docs_url}/openapi.json" if relabel_openapi else openapi_url
    parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        redirect = app.swagger_ui_oauth2_redirect_url
        return get_swagger_ui_html(
            openapi_url=root + spec_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets_url}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets_url}/favicon-32x32.png",
            oauth2_redirect_url=root + redirect if redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=parameters,
        )

    async def relabelled_openapi(request: Request) -> JSONResponse:
        return JSONResponse({**app.openapi(), "openapi": "3.0.3"})

    added: list[BaseRoute] = [Route(docs_url, swagger_ui_html, include_in_schema=False)]
    if relabel_openapi:
        added.append(Route(spec_url, relabelled_openapi, include_in_schema=False))
    added.append(Mount(assets_url, StaticFiles(directory=directory), name="swagger-ui-assets"))
    routes = app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", None) != docs_url]
    # First, so that a catch-all route of the app cannot shadow them.
    routes[:0] = added
    app.docs_url = docs_url
