"""``sessionmw.contrib.fastapi`` in-process (SPEC section 13).

* OpenAPI: an ``apiKey`` scheme in the header named by the ``header`` setting,
  referenced by the routes that take ``DeviceSession`` and by no other.
* The SPEC section 7 table through ``DeviceSession`` with the middleware in front and
  without it (the dependency checking the header itself, settings from the
  environment): the same status, body bytes and headers for every case, except the
  paths no route serves, which only the middleware can refuse.
* No second check behind the middleware; the dependency's own check on a route the
  middleware exempts; dependency overrides; the exception handler mechanism; a
  websocket route; ``SessionsDep``; ``local_swagger_ui``.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import Request

from sessionmw import ConfigError, SessionRecord, SessionStatus, Settings
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.backends import MemoryBackend
from sessionmw.contrib.fastapi import (
    DeviceSession,
    DeviceSessionHeader,
    SessionRejected,
    SessionsDep,
    app_sessions,
    device_session,
    local_swagger_ui,
)
from sessionmw.gate import forget_gates, gate_for
from sessionmw.sessions import Sessions
from tests.servers import closed_port_url, seed_store, send_case_asgi
from tests.spec_cases import (
    CASES,
    HEADER,
    MISSING_BODY,
    PASSED,
    RAW_CASES,
    VALID,
    Case,
)
from tests.test_spec_table import assert_matches

pytestmark = pytest.mark.usefixtures("fresh_gates")

ROUTED = {"/whoami", "/healthz"}

# Dependencies with their own settings (module level: FastAPI resolves the string
# annotations of routes against the module's globals).
TenantSession = Annotated[
    SessionRecord,
    Depends(DeviceSessionHeader({"header": "X-Tenant-Session", "backend": "memory://"})),
]
ALICE = SessionRecord("abc", "alice", SessionStatus.ACTIVE, None, None)
AliceSession = Annotated[
    SessionRecord, Depends(DeviceSessionHeader({"backend": MemoryBackend([ALICE])}))
]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store seeded with the table's sessions (never changed here)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fastapi-store') / 'sessions.db'}"
    seed_store(url)
    return url


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A setter of ``SESSIONMW_*`` variables, with every inherited one removed first."""
    for name in list(os.environ):
        if name.startswith("SESSIONMW_"):
            monkeypatch.delenv(name)

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"SESSIONMW_{key.upper()}", value)

    return set_env


def table_app(*, middleware: bool) -> FastAPI:
    """The table's app: ``/whoami`` takes ``DeviceSession``, ``/healthz`` takes nothing;
    settings from the environment, with or without the middleware in front."""
    app = FastAPI()
    if middleware:
        app.add_middleware(DeviceSessionMiddleware, Settings.from_env())

    @app.get("/whoami")
    async def whoami(session: DeviceSession) -> dict[str, str]:
        return {"user_id": session.user_id, "session_id": session.session_id}

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    return app


async def get(app: Any, path: str, session_id: str | None = None) -> httpx.Response:
    headers = {} if session_id is None else {HEADER: session_id}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path, headers=headers)


# -- OpenAPI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "X-Custom-Session"])
def test_openapi_declares_the_header_scheme(environ: Any, header: str | None) -> None:
    """An apiKey scheme in the header named by the ``header`` setting; protected routes
    reference it, the others do not."""
    if header is not None:
        environ(header=header)
    schema = table_app(middleware=False).openapi()
    scheme = schema["components"]["securitySchemes"]["DeviceSession"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == (
        "apiKey",
        "header",
        header or "X-Device-Session-ID",
    )
    assert schema["paths"]["/whoami"]["get"]["security"] == [{"DeviceSession": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_example_app_marks_exactly_its_protected_routes() -> None:
    """In the FastAPI example, the routes taking ``DeviceSession`` reference the scheme;
    ``/login`` and ``/healthz`` do not."""
    from examples import fastapi_app

    paths = fastapi_app.create_app(Settings(backend=MemoryBackend())).openapi()["paths"]
    secured = {
        (path, method)
        for path, operations in paths.items()
        for method, operation in operations.items()
        if operation.get("security") == [{"DeviceSession": []}]
    }
    assert secured == {
        ("/whoami", "get"),
        ("/logout", "post"),
        ("/logout-others", "post"),
        ("/devices", "get"),
    }
    assert "security" not in paths["/login"]["post"]
    assert "security" not in paths["/healthz"]["get"]


def test_explicit_settings_name_their_header() -> None:
    """``DeviceSessionHeader(settings)`` declares its own settings' header."""
    app = FastAPI()

    @app.get("/me")
    async def me(session: TenantSession) -> str:
        return session.user_id

    scheme = app.openapi()["components"]["securitySchemes"]["DeviceSession"]
    assert scheme["name"] == "X-Tenant-Session"


# -- SPEC section 7 with and without the middleware --------------------------------------------


@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
async def test_same_answers_with_and_without_middleware(
    environ: Any, sqlite_url: str, case: Case
) -> None:
    """Through ``DeviceSession``, every table case gets the same status, body bytes and
    headers with the middleware in front and without it; behind the middleware they are
    the table's. Only a path no route serves differs: without the middleware nothing
    checks it, and FastAPI answers it (404, or 307 to the slash-less route)."""
    if case.down:
        environ(backend=closed_port_url(), backend_timeout="1", exempt_paths="/healthz")
    else:
        environ(backend=sqlite_url, exempt_paths="/healthz")
    guarded = await send_case_asgi(table_app(middleware=True), case)
    forget_gates()  # the same settings: without this both would share one cache
    alone = await send_case_asgi(table_app(middleware=False), case)
    assert_matches(case, guarded)
    if case.path not in ROUTED and case.status in (401, 503):
        assert alone.status in (404, 307), alone
        return
    assert_matches(case, alone)
    assert (alone.status, alone.body) == (guarded.status, guarded.body)
    for name in ("content-type", "www-authenticate", "retry-after"):
        assert alone.headers.get(name) == guarded.headers.get(name), name
    if case.status not in (PASSED, 200):
        assert json.loads(alone.body) == case.body  # {"error": ...}, never {"detail": ...}


async def test_no_second_check_behind_the_middleware(environ: Any) -> None:
    """Behind the middleware the dependency returns the record it attached: the gate's
    check is never called by the dependency."""
    record = SessionRecord("abc", "alice", SessionStatus.ACTIVE, None, None)
    settings = Settings(backend=MemoryBackend([record]))
    app = FastAPI()
    app.add_middleware(DeviceSessionMiddleware, settings)
    seen: list[SessionRecord] = []

    @app.get("/whoami")
    async def whoami(session: DeviceSession, request: Request) -> str:
        seen.append(session)
        attached: SessionRecord = request.state.device_session
        assert attached is session
        return session.user_id

    assert (await get(app, "/whoami", "abc")).json() == "alice"  # a miss: the middleware checks
    gate = gate_for(settings)

    async def no_check(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("checked twice")

    gate.acheck = no_check  # type: ignore[method-assign]
    response = await get(app, "/whoami", "abc")  # a hit: no check anywhere
    assert (response.status_code, response.json()) == (200, "alice")
    assert seen == [record, record]


async def test_route_exempted_by_the_middleware_is_checked_by_the_dependency() -> None:
    """On a path the middleware exempts, a route taking ``DeviceSession`` still gets a
    checked record, through the middleware's gate and with its answers."""
    record = SessionRecord("abc", "alice", SessionStatus.ACTIVE, None, None)
    app = FastAPI()
    app.add_middleware(
        DeviceSessionMiddleware, backend=MemoryBackend([record]), exempt_paths=["/public"]
    )

    @app.get("/public/me")
    async def me(session: DeviceSession) -> str:
        return session.user_id

    missing = await get(app, "/public/me")
    assert (missing.status_code, missing.json()) == (401, MISSING_BODY)
    assert missing.headers["www-authenticate"] == "DeviceSession"
    assert (await get(app, "/public/me", "nope")).status_code == 401
    assert (await get(app, "/public/me", "abc")).json() == "alice"


# -- overrides, handlers, websockets, Sessions --------------------------------------------------


async def test_dependency_override_replaces_the_check(environ: Any) -> None:
    """``app.dependency_overrides[device_session]`` gives routes a record with no header
    and no store (the environment's store here is unreachable)."""
    environ(backend=closed_port_url(), backend_timeout="1")
    app = table_app(middleware=False)
    assert (await get(app, "/whoami", VALID)).status_code == 503  # the real check ran
    fake = SessionRecord("test-session", "tester", SessionStatus.ACTIVE, None, None)
    app.dependency_overrides[device_session] = lambda: fake
    response = await get(app, "/whoami")
    assert (response.status_code, response.json()) == (
        200,
        {"user_id": "tester", "session_id": "test-session"},
    )
    app.dependency_overrides.clear()
    assert (await get(app, "/whoami")).status_code == 401


async def test_sessions_dependency_override(environ: Any) -> None:
    """``SessionsDep`` is overridden through ``app_sessions``."""
    environ(backend="memory://")
    app = FastAPI()

    @app.post("/login")
    async def login(sessions: SessionsDep) -> str:
        return (await sessions.acreate("alice")).session_id

    own = Sessions(backend=MemoryBackend(), header="X-Other")
    app.dependency_overrides[app_sessions] = lambda: own
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        created = (await client.post("/login")).json()
    assert own.get(created) is not None


async def test_an_app_handler_for_session_rejected_wins(environ: Any) -> None:
    """The built-in handler is only a default; a 401 status handler (for
    ``HTTPException``s) does not change the gate's answer."""
    environ(backend="memory://")
    app = table_app(middleware=False)
    default = await get(app, "/whoami")
    assert default.content == b'{"error": "missing_session"}'

    async def status_401(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "from the 401 handler"}, status_code=401)

    app.add_exception_handler(401, status_401)
    app.middleware_stack = None  # rebuilt with the new handler at the next call
    assert (await get(app, "/whoami")).content == b'{"error": "missing_session"}'

    async def own(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SessionRejected)
        return JSONResponse({"mine": exc.answer.code}, status_code=exc.answer.status)

    app.add_exception_handler(SessionRejected, own)
    app.middleware_stack = None
    response = await get(app, "/whoami")
    assert (response.status_code, response.json()) == (401, {"mine": "missing_session"})


async def test_websocket_refused_with_1008(environ: Any) -> None:
    """A websocket route taking ``DeviceSession`` is closed with 1008 and the error
    code before accept when the session is missing; accepted when valid."""
    environ(backend="memory://")
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, session: AliceSession) -> None:
        await websocket.accept()
        await websocket.send_text(session.user_id)
        await websocket.close()

    async def talk(headers: list[tuple[bytes, bytes]]) -> list[MutableMapping[str, Any]]:
        sent: list[MutableMapping[str, Any]] = []
        inbox: list[MutableMapping[str, Any]] = [
            {"type": "websocket.connect"},
            {"type": "websocket.disconnect", "code": 1000},
        ]

        async def receive() -> MutableMapping[str, Any]:
            return inbox.pop(0)

        async def send_(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": "/ws",
            "raw_path": b"/ws",
            "root_path": "",
            "scheme": "ws",
            "query_string": b"",
            "headers": headers,
            "subprotocols": [],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
            "state": {},
        }
        await app(scope, receive, send_)
        return sent

    refused = await talk([])
    assert refused == [{"type": "websocket.close", "code": 1008, "reason": "missing_session"}]
    accepted = await talk([(HEADER.lower().encode(), b"abc")])
    assert [m["type"] for m in accepted][:2] == ["websocket.accept", "websocket.send"]
    assert accepted[1]["text"] == "alice"


async def test_sessions_dep_is_the_middleware_gate_or_the_environment(environ: Any) -> None:
    """``SessionsDep`` belongs to the middleware's gate when the app has one (exempt
    routes too), else to the gate of ``Settings.from_env()``."""
    environ(backend="memory://", ttl="30")
    settings = Settings(backend=MemoryBackend(), exempt_paths=["/gate"])
    got: list[Sessions] = []

    def app_with(middleware: bool) -> FastAPI:
        app = FastAPI()
        if middleware:
            app.add_middleware(DeviceSessionMiddleware, settings)

        @app.get("/gate")
        async def which(sessions: SessionsDep) -> str:
            got.append(sessions)
            return "ok"

        return app

    assert (await get(app_with(True), "/gate")).status_code == 200
    assert (await get(app_with(False), "/gate")).status_code == 200
    assert got[0].gate is gate_for(settings)
    assert got[1].gate is gate_for(Settings.from_env())
    assert got[1].settings.ttl == 30


async def test_bad_environment_is_a_config_error_naming_the_key(environ: Any) -> None:
    """Without the middleware, a bad ``SESSIONMW_`` variable raises ConfigError naming
    the key at the first checked request (never a silent default)."""
    environ(ttl="-1")
    with pytest.raises(ConfigError, match="ttl"):
        await get(table_app(middleware=False), "/whoami", VALID)


def test_bad_environment_stops_the_app_at_start_up() -> None:
    """Importing the module (what starting an app that uses it does) with a bad or
    misspelt ``SESSIONMW_`` variable fails there, naming the key."""
    import subprocess
    import sys

    for variable, key in (("SESSIONMW_TTL", "ttl"), ("SESSIONMW_TLL", "SESSIONMW_TLL")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONMW_")}
        env[variable] = "-1"
        done = subprocess.run(
            [sys.executable, "-c", "import sessionmw.contrib.fastapi"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0
        assert f"ConfigError: {key}:" in done.stderr


# -- Swagger UI from local files -----------------------------------------------------------------


async def test_local_swagger_ui_serves_every_asset_itself(environ: Any) -> None:
    """``/docs`` names only local files, which are served; the page reads a 3.0-labelled
    copy of the document while ``/openapi.json`` stays 3.1; no validator badge."""
    environ(backend="memory://", exempt_paths="/docs,/openapi.json")
    app = table_app(middleware=True)
    local_swagger_ui(app)
    page = await get(app, "/docs")
    assert page.status_code == 200
    html = page.text
    assert "cdn." not in html
    assert "https://" not in html
    assert "http://" not in html
    assert '"validatorUrl": null' in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert f"/docs/assets/{asset}" in html
        response = await get(app, f"/docs/assets/{asset}")
        assert response.status_code == 200, asset
        assert len(response.content) > 100
    assert (await get(app, "/docs/openapi.json")).json()["openapi"] == "3.0.3"
    real = (await get(app, "/openapi.json")).json()
    assert real["openapi"].startswith("3.1")
    assert "/docs/openapi.json" not in real["paths"]
    assert (await get(app, "/whoami")).status_code == 401


def test_local_swagger_ui_needs_the_docs_exempt(environ: Any) -> None:
    """Behind a middleware that would check ``/docs``, it refuses at set-up."""
    environ(backend="memory://", exempt_paths="/openapi.json")
    app = table_app(middleware=True)
    with pytest.raises(ConfigError, match="exempt_paths"):
        local_swagger_ui(app)
