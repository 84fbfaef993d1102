"""The pure ASGI middleware in-process: SPEC section 7 and ASGI manners.

* The SPEC table through ``httpx.ASGITransport`` against both examples (Starlette
  and FastAPI), built from :func:`tests.spec_cases.settings_for`.
* Raw ASGI calls for what a client library hides: header name case and repeats as a
  server could send them, non-ASCII bytes, ``scope["state"]`` handling, the request
  body never being read, lifespan pass-through and gate start/stop, websocket
  handshakes (accept and 1008), streaming responses not buffered, background tasks
  and context variables as without the middleware.
* No raw session ID in any captured log line.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from examples import fastapi_app, starlette_app
from sessionmw import ConfigError, SessionRecord, Settings
from sessionmw._log import SESSION_REJECTED
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.backends.redis import RedisBackend, session_key
from sessionmw.gate import forget_gates
from tests import hook_cases
from tests.servers import send_case_asgi
from tests.spec_cases import (
    CASES,
    EXPIRED,
    HEADER,
    RAW_CASES,
    REVOKED,
    UNKNOWN,
    VALID,
    Case,
    DownBackend,
    seeded_backend,
    settings_for,
)
from tests.test_spec_table import assert_matches

Message = MutableMapping[str, Any]
LOWER = HEADER.lower().encode()


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    yield
    forget_gates()


# -- SPEC section 7, table-driven ------------------------------------------------------

EXAMPLES: dict[str, Callable[[Settings], Any]] = {
    "starlette": starlette_app.create_app,
    "fastapi": fastapi_app.create_app,
}


@pytest.fixture(params=list(EXAMPLES))
def example(request: pytest.FixtureRequest) -> Callable[[Settings], Any]:
    return EXAMPLES[request.param]


@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
async def test_spec_table(example: Callable[[Settings], Any], case: Case) -> None:
    """Each request gets the table's status, byte-identical body and headers."""
    backend = DownBackend() if case.down else seeded_backend()
    app = example(Settings(**settings_for(backend)))
    assert_matches(case, await send_case_asgi(app, case))


async def test_invalid_bodies_are_byte_identical(example: Callable[[Settings], Any]) -> None:
    """Unknown, revoked, expired and malformed IDs get exactly the same answer."""
    app = example(Settings(**settings_for(seeded_backend())))
    answers = set()
    for value in (UNKNOWN, REVOKED, EXPIRED, "a b", "x" * 300):
        result = await send_case_asgi(app, Case("x", [(HEADER, value)]))
        answers.add((result.status, result.body, tuple(sorted(result.headers.items()))))
    assert len(answers) == 1


# -- raw ASGI -----------------------------------------------------------------------------


def http_scope(
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    path: str = "/whoami",
    method: str = "GET",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(LOWER, VALID.encode())] if headers is None else headers,
        **extra,
    }


class Recorder:
    """An inner ASGI app that records the scope it got and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[MutableMapping[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


async def _no_body(*args: Any) -> Message:
    raise AssertionError("the middleware must not read the request body")


class Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def call(app: Any, scope: dict[str, Any]) -> Sent:
    sent = Sent()
    await app(scope, _no_body, sent)
    return sent


@pytest.fixture
def inner() -> Recorder:
    return Recorder()


@pytest.fixture
def mw(inner: Recorder) -> DeviceSessionMiddleware:
    return DeviceSessionMiddleware(inner, **settings_for(seeded_backend()))


async def test_record_in_scope_state(mw: DeviceSessionMiddleware, inner: Recorder) -> None:
    """A valid request reaches the app with the record at scope["state"]["device_session"]."""
    sent = await call(mw, http_scope())
    assert sent.status == 200
    record = inner.scopes[0]["state"]["device_session"]
    assert isinstance(record, SessionRecord)
    assert (record.session_id, record.user_id) == (VALID, "user-1")


async def test_existing_state_is_kept(mw: DeviceSessionMiddleware, inner: Recorder) -> None:
    """An existing scope["state"] (lifespan state) is added to, never replaced."""
    state = {"db": "pool"}
    await call(mw, http_scope(state=state))
    assert inner.scopes[0]["state"] is state
    assert state["db"] == "pool"
    assert state["device_session"].session_id == VALID


@pytest.mark.parametrize(
    "headers",
    [
        [(HEADER.encode(), VALID.encode())],
        [(HEADER.upper().encode(), VALID.encode())],
        [(b"accept", b"*/*"), (LOWER, VALID.encode()), (b"x-other", b"1")],
    ],
    ids=["mixed_case_name", "upper_case_name", "among_others"],
)
async def test_header_found_in_any_case(
    mw: DeviceSessionMiddleware, headers: list[tuple[bytes, bytes]]
) -> None:
    """Header names are matched case-insensitively, even from a server that keeps case."""
    assert (await call(mw, http_scope(headers))).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        [(LOWER, VALID.encode()), (LOWER, VALID.encode())],
        [(HEADER.encode(), VALID.encode()), (HEADER.upper().encode(), VALID.encode())],
        [(LOWER, VALID.encode()), (b"x-other", b""), (LOWER, b"other")],
    ],
    ids=["same", "different_case_names", "apart"],
)
async def test_repeated_header_is_invalid(
    mw: DeviceSessionMiddleware, inner: Recorder, headers: list[tuple[bytes, bytes]]
) -> None:
    """Two entries for the session header are refused as invalid, whatever they hold."""
    sent = await call(mw, http_scope(headers))
    assert (sent.status, sent.body) == (401, b'{"error": "invalid_session"}')
    assert inner.scopes == []


@pytest.mark.parametrize(
    "value", [b"s-valid\xe9", b"\xff\xfe", "s-valid.user1\u00e9".encode(), b"s-valid\x00"]
)
async def test_non_ascii_bytes_are_invalid(mw: DeviceSessionMiddleware, value: bytes) -> None:
    """Bytes outside the ID alphabet (latin-1, UTF-8, NUL) are refused without a lookup."""
    sent = await call(mw, http_scope([(LOWER, value)]))
    assert (sent.status, sent.body) == (401, b'{"error": "invalid_session"}')
    assert mw.gate.cache.stats()["misses"] == 0


async def test_early_answers_carry_length_and_type(mw: DeviceSessionMiddleware) -> None:
    """The middleware's own answers have content-length and a JSON content type."""
    sent = await call(mw, http_scope([]))
    headers = dict(sent.messages[0]["headers"])
    assert headers[b"content-length"] == str(len(sent.body)).encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"www-authenticate"] == b"DeviceSession"
    assert sent.messages[1].get("more_body", False) is False


async def test_backend_down_is_503_with_retry_after(inner: Recorder) -> None:
    mw = DeviceSessionMiddleware(inner, backend=DownBackend())
    sent = await call(mw, http_scope())
    assert sent.status == 503
    assert dict(sent.messages[0]["headers"])[b"retry-after"] == b"1"


async def test_exempt_method_and_path_skip_the_check(inner: Recorder) -> None:
    """OPTIONS and exempt path prefixes reach the app with no header at all."""
    mw = DeviceSessionMiddleware(inner, backend=seeded_backend(), exempt_paths=["/public/"])
    assert (await call(mw, http_scope([], method="OPTIONS"))).status == 200
    assert (await call(mw, http_scope([], path="/public/logo.png"))).status == 200
    assert (await call(mw, http_scope([], path="/publicity"))).status == 401
    assert all("device_session" not in s.get("state", {}) for s in inner.scopes)


async def test_other_scope_types_pass_through(mw: DeviceSessionMiddleware, inner: Recorder) -> None:
    scope = {"type": "custom.protocol"}
    await mw(scope, _no_body, Sent())
    assert inner.scopes == [scope]


def test_keyword_settings_cover_every_setting() -> None:
    """The adapters' typed keywords (SettingsKeywords) are exactly the settings' keys."""
    from sessionmw.settings import SettingsKeywords

    assert list(SettingsKeywords.__annotations__) == list(Settings.keys())
    parameters = inspect.signature(DeviceSessionMiddleware.__init__).parameters
    assert parameters["keywords"].kind is inspect.Parameter.VAR_KEYWORD


def test_settings_object_mapping_and_keywords_agree() -> None:
    """A Settings, a mapping and keywords configure the same shared gate."""
    backend = seeded_backend()
    a = DeviceSessionMiddleware(Recorder(), Settings(backend=backend, ttl=30))
    b = DeviceSessionMiddleware(Recorder(), {"backend": backend, "ttl": 30})
    c = DeviceSessionMiddleware(Recorder(), backend=backend, ttl=30)
    d = DeviceSessionMiddleware(Recorder(), Settings(backend=backend), ttl=30)
    assert a.gate is b.gate is c.gate is d.gate


@pytest.mark.parametrize(("key", "value"), [("ttl", -1), ("backend", "ftp://x"), ("header", "")])
def test_bad_settings_fail_at_construction(key: str, value: Any) -> None:
    """Configuration errors surface when the middleware is built, naming the key."""
    with pytest.raises(ConfigError, match=key):
        DeviceSessionMiddleware(Recorder(), **{key: value})


def test_unknown_keyword_is_a_config_error_with_a_suggestion() -> None:
    """Same answer as every other adapter; mypy flags it too (the ignore below is
    checked by warn_unused_ignores)."""
    with pytest.raises(ConfigError, match=r"tll: unknown setting \(did you mean 'ttl'\?\)"):
        DeviceSessionMiddleware(Recorder(), tll=5)  # type: ignore[call-arg]


def test_add_middleware_and_middleware_list() -> None:
    """Both Starlette styles work: ``add_middleware(..., **settings)`` and ``Middleware``."""
    from starlette.middleware import Middleware

    backend = seeded_backend()
    one = Starlette(middleware=[Middleware(DeviceSessionMiddleware, backend=backend)])
    two = Starlette()
    two.add_middleware(DeviceSessionMiddleware, backend=backend)
    assert one.user_middleware[0].cls is two.user_middleware[0].cls


# -- lifespan --------------------------------------------------------------------------


class LifespanApp:
    """An inner app that runs the lifespan protocol and records what it received."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.state_seen: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        self.state_seen = scope.get("state")
        while True:
            message = await receive()
            self.received.append(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"]["pool"] = "ready"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return


async def test_lifespan_passes_through_and_starts_the_gate() -> None:
    """Lifespan messages reach the app unchanged; startup starts the gate, shutdown stops it."""
    inner = LifespanApp()
    mw = DeviceSessionMiddleware(inner, backend=seeded_backend())
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    started_at_startup: list[bool] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            started_at_startup.append(mw.gate.started)

    state: dict[str, Any] = {}
    task = asyncio.ensure_future(mw({"type": "lifespan", "state": state}, incoming.get, send))
    await incoming.put({"type": "lifespan.startup"})
    await incoming.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    assert inner.received == ["lifespan.startup", "lifespan.shutdown"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert started_at_startup == [True]
    assert mw.gate.started is False
    assert inner.state_seen is state
    assert state == {"pool": "ready"}


@pytest.mark.redis
async def test_lifespan_shutdown_closes_the_backends_async_client(
    redis_url: str, redis_client: Any
) -> None:
    """Shutdown awaits the backend's aclose() on the server's loop: the async client
    a request opened is disconnected there, not left to the garbage collector."""
    redis_client.hset(session_key(VALID), mapping={"user_id": "user-1", "status": "active"})
    lifespan, recorder = LifespanApp(), Recorder()

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await (lifespan if scope["type"] == "lifespan" else recorder)(scope, receive, send)

    mw = DeviceSessionMiddleware(inner, backend=redis_url)
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(mw({"type": "lifespan", "state": {}}, incoming.get, Sent()))
    await incoming.put({"type": "lifespan.startup"})
    assert (await call(mw, http_scope())).status == 200  # a miss: the backend's async path
    backend = mw.gate.backend
    assert isinstance(backend, RedisBackend)
    connections = list(backend._async_client().connection_pool._available_connections)
    assert connections
    assert all(c.is_connected for c in connections)
    await incoming.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    assert lifespan.received == ["lifespan.startup", "lifespan.shutdown"]
    assert not any(c.is_connected for c in connections)


async def test_first_request_starts_the_gate_without_lifespan(
    mw: DeviceSessionMiddleware,
) -> None:
    """A server without lifespan support: the gate starts on the first request."""
    assert mw.gate.started is False
    await call(mw, http_scope([]))
    assert mw.gate.started is True


async def test_lifespan_errors_of_the_app_propagate() -> None:
    """An app that does not support lifespan raises as it would without the middleware."""

    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("lifespan not supported")

    mw = DeviceSessionMiddleware(no_lifespan)
    with pytest.raises(RuntimeError, match="not supported"):
        await mw({"type": "lifespan"}, _no_body, Sent())


# -- websocket -------------------------------------------------------------------------


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    record = websocket.state.device_session
    await websocket.send_json({"user_id": record.user_id})
    await websocket.close()


def ws_app() -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", ws_echo)])
    app.add_middleware(DeviceSessionMiddleware, **settings_for(seeded_backend()))
    return app


async def run_ws(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            await incoming.put({"type": "websocket.disconnect", "code": message.get("code")})

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
             "headers": headers, "subprotocols": [], "asgi": {"version": "3.0"}}  # fmt: skip
    await asyncio.wait_for(app(scope, incoming.get, send), 5)
    return sent


async def test_websocket_with_valid_session_is_accepted() -> None:
    """A valid handshake is accepted by the app, which sees the record."""
    sent = await run_ws(ws_app(), [(LOWER, VALID.encode())])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == '{"user_id":"user-1"}'


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "missing_session"),
        ([(LOWER, REVOKED.encode())], "invalid_session"),
        ([(LOWER, b"a b")], "invalid_session"),
        ([(LOWER, VALID.encode()), (LOWER, VALID.encode())], "invalid_session"),
    ],
    ids=["missing", "revoked", "malformed", "repeated"],
)
async def test_websocket_without_valid_session_is_closed_1008(
    headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    """The handshake is read, then refused with close code 1008, never accepted."""
    received: list[str] = []
    app = ws_app()

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        async def tracking_receive() -> Message:
            message: Message = await receive()
            received.append(message["type"])
            return message

        await app(scope, tracking_receive, send)

    sent = await run_ws(spy, headers)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": reason}]
    assert received == ["websocket.connect"]


# -- the app's own behaviour is untouched ----------------------------------------------


async def test_streaming_response_is_not_buffered(mw: DeviceSessionMiddleware) -> None:
    """Chunks reach the server as the app sends them (the second waits for the first)."""
    first_chunk_out = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        yield b"one,"
        await asyncio.wait_for(first_chunk_out.wait(), 5)
        yield b"two"

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(stream(), media_type="text/plain")

    app = Starlette(routes=[Route("/whoami", endpoint)])
    app.add_middleware(DeviceSessionMiddleware, mw.settings)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("body") == b"one,":
            first_chunk_out.set()

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    await asyncio.wait_for(app(http_scope(), receive, send), 5)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert bodies == [b"one,", b"two"]


async def test_background_task_runs_after_the_response(mw: DeviceSessionMiddleware) -> None:
    """A background task runs once the response is sent, in the request's call."""
    order: list[str] = []

    async def task() -> None:
        order.append("background")

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(task))

    app = Starlette(routes=[Route("/whoami", endpoint)])
    app.add_middleware(DeviceSessionMiddleware, mw.settings)

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            order.append("body sent")

    await app(http_scope(), _no_body, send)
    assert order == ["body sent", "background"]


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
set_inside: contextvars.ContextVar[str] = contextvars.ContextVar("set_inside", default="-")


async def test_contextvars_flow_both_ways(mw: DeviceSessionMiddleware) -> None:
    """The app sees context set outside the middleware, and the outside sees what the
    app set (no task in between, unlike BaseHTTPMiddleware)."""
    seen: dict[str, str] = {}

    async def endpoint(request: Request) -> JSONResponse:
        seen["inside"] = request_id.get()
        set_inside.set("from the endpoint")
        return JSONResponse({})

    app = Starlette(routes=[Route("/whoami", endpoint)])
    app.add_middleware(DeviceSessionMiddleware, mw.settings)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        request_id.set("req-42")
        await app(scope, receive, send)
        seen["after"] = set_inside.get()

    await asyncio.create_task(outer(http_scope(), _no_body, Sent()))
    assert seen == {"inside": "req-42", "after": "from the endpoint"}


# -- logs ----------------------------------------------------------------------------------


async def test_no_raw_session_id_in_logs() -> None:
    """Rejections, backend failures and hook calls log hashed IDs only."""
    secret_ids = [VALID, REVOKED, EXPIRED, UNKNOWN, "s-never-seen-1234"]
    app = starlette_app.create_app(Settings(**hook_cases.hook_settings()))
    down = starlette_app.create_app(Settings(**settings_for(DownBackend())))
    with structlog.testing.capture_logs() as logs:
        for value in secret_ids:
            await send_case_asgi(app, Case("x", [(HEADER, value)]))
            await send_case_asgi(down, Case("x", [(HEADER, value)]))
        headers, body = hook_cases.revoke(VALID)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (
                await client.post(hook_cases.HOOK_PATH, content=body, headers=headers)
            ).is_success
            assert (await client.get("/whoami", headers={HEADER: VALID})).status_code == 401
    assert any(entry["event"] == SESSION_REJECTED for entry in logs)
    reasons = {entry.get("reason") for entry in logs if entry["event"] == SESSION_REJECTED}
    assert {"unknown", "revoked", "expired"} <= reasons
    text = repr(logs)
    for value in secret_ids:
        assert value not in text


def test_middleware_needs_no_starlette() -> None:
    """``sessionmw.asgi`` imports and runs with Starlette unavailable (pure ASGI)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "import asyncio, sessionmw.asgi as a\n"
        "sent = []\n"
        "async def app(s, r, se): pass\n"
        "async def send(m): sent.append(m)\n"
        "mw = a.DeviceSessionMiddleware(app)\n"
        "scope = {'type': 'http', 'method': 'GET', 'path': '/', 'headers': []}\n"
        "asyncio.run(mw(scope, None, send))\n"
        "assert sent[0]['status'] == 401, sent\n"
        "assert 'starlette' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
