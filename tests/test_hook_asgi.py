"""The invalidation hook (SPEC section 8) served by the ASGI middleware and as a Route.

Both mounts run every :mod:`tests.hook_cases` check through httpx's ASGI transport
(driven synchronously through an anyio portal, since the checks are shared with sync
adapters); the method, body-limit and streaming behaviour is driven with raw ASGI
messages. (Starlette's TestClient is not used: with httpx it warns of deprecation.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import anyio.from_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from examples.starlette_app import healthz, whoami
from sessionmw import ConfigError, Settings
from sessionmw._body import MAX_BODY
from sessionmw.asgi import DeviceSessionMiddleware, InvalidationApp, invalidation_route
from sessionmw.gate import forget_gates, gate_for
from tests import hook_cases
from tests.hook_cases import HOOK_PATH, SIGNED_CASES, TOO_LARGE_BODY, HookCase, decode
from tests.spec_cases import HEADER, seeded_backend

ROUTE_PATH = "/hooks/sessions"


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    yield
    forget_gates()


def _middleware_app() -> tuple[Starlette, str]:
    app = Starlette(routes=[Route("/whoami", whoami), Route("/healthz", healthz)])
    app.add_middleware(DeviceSessionMiddleware, **hook_cases.hook_settings())
    return app, HOOK_PATH


def _route_app() -> tuple[Starlette, str]:
    # The route shares the middleware's settings (hence its gate and cache); its path
    # is exempt so the middleware lets the producer's request through to it.
    settings = Settings(**hook_cases.hook_settings(exempt_paths=["/healthz", "/hooks/"]))
    routes = [
        Route("/whoami", whoami),
        Route("/healthz", healthz),
        invalidation_route(settings, ROUTE_PATH),
    ]
    return Starlette(routes=routes, middleware=[Middleware(DeviceSessionMiddleware, settings)]), (
        ROUTE_PATH
    )


MOUNTS = {"middleware": _middleware_app, "route": _route_app}


class SyncClient:
    """A blocking httpx client for an in-process ASGI app (no lifespan)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, app: Any) -> None:
        self.portal = portal
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(lambda: self.client.request(method, path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@contextmanager
def sync_client(app: Any) -> Iterator[SyncClient]:
    with anyio.from_thread.start_blocking_portal() as portal:
        client = SyncClient(portal, app)
        try:
            yield client
        finally:
            portal.call(client.client.aclose)


class Client:
    """``post`` and ``status_of`` for :mod:`tests.hook_cases`."""

    def __init__(self, http: SyncClient, path: str) -> None:
        self.http = http
        self.path = path

    def post(self, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        response = self.http.post(self.path, content=body, headers=dict(headers))
        return response.status_code, decode(response.content)

    def status_of(self, session_id: str) -> int:
        return self.http.get("/whoami", headers={HEADER: session_id}).status_code


@pytest.fixture(params=list(MOUNTS))
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    app, path = MOUNTS[request.param]()
    with sync_client(app) as http:
        yield Client(http, path)


@pytest.mark.parametrize("case", SIGNED_CASES, ids=lambda c: c.name)
def test_signed_cases(client: Client, case: HookCase) -> None:
    """Each request gets the SPEC answer; no failure of the signature package is a 500."""
    hook_cases.run_signed_case(client.post, case)


@pytest.mark.parametrize("scenario", hook_cases.SCENARIOS, ids=lambda f: f.__name__)
def test_scenarios(client: Client, scenario: Any) -> None:
    """Push path, replay, all-or-nothing, user revocation and flush, forged revocation."""
    scenario(client.post, client.status_of)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_other_methods_get_405_with_allow(client: Client, method: str) -> None:
    """Only POST is served; the answer says so in ``Allow``."""
    response = client.http.request(method, client.path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_hook_not_served_without_a_secret() -> None:
    """Without ``invalidation_secret`` the path is an ordinary protected path."""
    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(DeviceSessionMiddleware, backend=seeded_backend())
    headers, body = hook_cases.revoke("s-valid")
    with sync_client(app) as http:
        response = http.post(HOOK_PATH, content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "missing_session"}


def test_route_needs_a_secret() -> None:
    """Asking for the hook route without a secret is a configuration error."""
    with pytest.raises(ConfigError, match="invalidation_secret"):
        invalidation_route(Settings())


def test_route_accepts_keywords_and_a_gate() -> None:
    """``invalidation_route`` takes keyword settings or a gate; the path defaults to the setting."""
    route = invalidation_route(invalidation_secret=hook_cases.SECRET)
    assert route.path == HOOK_PATH
    gate = gate_for(Settings(invalidation_secret=(hook_cases.SECRET,)))
    assert invalidation_route(gate, "/x").path == "/x"


# -- raw ASGI: body limits and streaming -------------------------------------------------


class Driver:
    """Drives an ASGI app with a scripted body; records what was read and sent."""

    def __init__(self, chunks: list[bytes], *, disconnect: bool = False) -> None:
        self.chunks = list(chunks)
        self.disconnect = disconnect
        self.reads = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        if not self.chunks:
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        more = bool(self.chunks) or self.disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])


def _scope(
    method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": HOOK_PATH,
        "raw_path": HOOK_PATH.encode(),
        "query_string": b"",
        "headers": headers or [],
    }


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app must not be reached for the hook path")


@pytest.fixture
def middleware() -> DeviceSessionMiddleware:
    return DeviceSessionMiddleware(_never_called, **hook_cases.hook_settings())


async def test_declared_oversize_is_refused_unread(middleware: DeviceSessionMiddleware) -> None:
    """Content-Length over 64 KiB: 413 before a single body byte is read."""
    driver = Driver([b"{}"])
    scope = _scope(headers=[(b"content-length", str(MAX_BODY + 1).encode())])
    await middleware(scope, driver.receive, driver.send)
    assert driver.status == 413
    assert driver.reads == 0
    assert driver.headers[b"content-length"] == str(len(driver.sent[1]["body"])).encode()


async def test_chunked_oversize_stops_reading(middleware: DeviceSessionMiddleware) -> None:
    """A chunked body (no Content-Length) is refused once it passes 64 KiB, mid-stream."""
    chunks = [b"x" * 4096] * 40  # 160 KiB offered
    driver = Driver(chunks)
    await middleware(_scope(), driver.receive, driver.send)
    assert driver.status == 413
    assert driver.reads == MAX_BODY // 4096 + 1, "reading stops at the first chunk over"


async def test_exactly_64_kib_is_read_and_checked(middleware: DeviceSessionMiddleware) -> None:
    """A body of exactly 64 KiB is within the limit (then fails the signature: 401)."""
    driver = Driver([b"x" * 4096] * (MAX_BODY // 4096))
    await middleware(_scope(), driver.receive, driver.send)
    assert driver.status == 401


async def test_signed_chunked_body_is_applied(middleware: DeviceSessionMiddleware) -> None:
    """A signed body split over several messages is reassembled exactly."""
    headers, body = hook_cases.revoke("s-valid")
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    driver = Driver([body[:5], b"", body[5:20], body[20:]])
    await middleware(_scope(headers=raw), driver.receive, driver.send)
    assert driver.status == 200
    assert decode(driver.sent[1]["body"]) == {"applied": 1}


async def test_unreadable_content_length_is_400(middleware: DeviceSessionMiddleware) -> None:
    """A Content-Length that is not a plain decimal cannot be trusted: refused unread."""
    driver = Driver([b"{}"])
    await middleware(_scope(headers=[(b"content-length", b"12abc")]), driver.receive, driver.send)
    assert driver.status == 400


async def test_client_gone_mid_body_sends_nothing(middleware: DeviceSessionMiddleware) -> None:
    """An http.disconnect while reading ends the request quietly, no answer, no error."""
    driver = Driver([b'{"events": '], disconnect=True)
    await middleware(_scope(), driver.receive, driver.send)
    assert driver.sent == []


def test_too_large_body_over_http(client: Client) -> None:
    """64 KiB + 1 byte, unsigned, through a real client: 413."""
    status, _ = client.post({"content-type": "application/json"}, TOO_LARGE_BODY)
    assert status == 413


async def test_websocket_on_the_route_is_refused() -> None:
    """The hook app closes a websocket handshake (1008) instead of erroring."""
    app = InvalidationApp(gate_for(Settings(invalidation_secret=(hook_cases.SECRET,))))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app({"type": "websocket", "path": HOOK_PATH, "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
