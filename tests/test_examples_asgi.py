"""The Starlette and FastAPI examples under a real uvicorn, in subprocesses.

* The SPEC section 7 table against ``uvicorn examples.starlette_app:app`` and
  ``uvicorn examples.fastapi_app:app`` on a seeded SQLite store, and against the same
  with an unreachable auth service (the 503 rows), raw header bytes sent as is.
* The hook (tests/hook_cases.py) through the real server: the push path, replay,
  and a streamed (chunked) oversize body.
* A websocket handshake, accepted and refused, through a real client.
* One backend call for 50 simultaneous requests for one uncached session.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sessionmw.backends.sql import SQLBackend
from tests import hook_cases
from tests.hook_cases import HOOK_PATH, SECRET
from tests.servers import (
    SlowAuthService,
    clean_env,
    closed_port_url,
    free_port,
    running,
    seed_store,
    send_case,
    simultaneous_gets,
    uvicorn,
)
from tests.spec_cases import (
    CASES,
    HEADER,
    RAW_CASES,
    REVOKED,
    VALID,
    Case,
)
from tests.test_spec_table import assert_matches

pytestmark = pytest.mark.slow

EXAMPLES = {
    "starlette": "examples.starlette_app:app",
    "fastapi": "examples.fastapi_app:app",
}


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store seeded with the table's sessions (never changed by these tests)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('asgi-store') / 'sessions.db'}"
    seed_store(url)
    return url


@pytest.fixture(scope="module", params=list(EXAMPLES))
def servers(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[dict[bool, str]]:
    """Base URLs of one example: seeded store (False) and unreachable store (True)."""
    app = EXAMPLES[request.param]
    up, down = free_port(), free_port()
    closed = closed_port_url()
    with (
        running(uvicorn(app, up), clean_env({"SESSIONMW_BACKEND": sqlite_url}), port=up) as ok,
        running(
            uvicorn(app, down),
            clean_env({"SESSIONMW_BACKEND": closed, "SESSIONMW_BACKEND_TIMEOUT": "1"}),
            port=down,
        ) as broken,
    ):
        yield {False: ok, True: broken}


@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
def test_spec_table_under_uvicorn(servers: dict[bool, str], case: Case) -> None:
    """Each example under uvicorn gives the table's status, body and headers."""
    assert_matches(case, send_case(servers[case.down], case))


# -- the hook through a real server ---------------------------------------------------------


@pytest.fixture(params=list(EXAMPLES))
def hooked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """An example with the hook enabled (both test secrets) on its own seeded store."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hook-store') / 'sessions.db'}"
    seed_store(url)
    port = free_port()
    env = clean_env({
        "SESSIONMW_BACKEND": url,
        "SESSIONMW_INVALIDATION_SECRET": f"{SECRET},{hook_cases.OLD_SECRET}",
    })  # fmt: skip
    with running(uvicorn(EXAMPLES[request.param], port), env, port=port) as base:
        yield base, url


def _post(base: str) -> hook_cases.Post:
    def post(headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        # http.client sends a given Content-Length as is (httpx refuses a malformed one).
        parts = urlsplit(base)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            connection.request("POST", HOOK_PATH, body=body, headers=dict(headers))
            response = connection.getresponse()
            return response.status, hook_cases.decode(response.read())
        finally:
            connection.close()

    return post


def _status_of(base: str) -> hook_cases.StatusOf:
    return lambda sid: httpx.get(base + "/whoami", headers={HEADER: sid}, timeout=10).status_code


def test_push_path_under_uvicorn(hooked: tuple[str, str]) -> None:
    """A session the SQLite store still reports active gets 401 after a signed revocation."""
    base, store_url = hooked
    hook_cases.check_push_path(_post(base), _status_of(base))
    store = SQLBackend(store_url)
    assert store.lookup(VALID).status.value == "active"  # type: ignore[union-attr]
    store.close()


def test_replay_and_signature_failures_under_uvicorn(hooked: tuple[str, str]) -> None:
    """Replay is a duplicate; signature failures and bad payloads get their codes."""
    base, _ = hooked
    post = _post(base)
    hook_cases.check_replay(post, _status_of(base))
    for case in hook_cases.SIGNED_CASES:
        if case in hook_cases.LENGTH_CASES:
            # The server may refuse a malformed Content-Length itself, before the app.
            assert post(*case.build())[0] in (400, 413), case.name
        elif case.status != 200:
            hook_cases.run_signed_case(post, case)


def test_chunked_oversize_body_under_uvicorn(hooked: tuple[str, str]) -> None:
    """A chunked body over 64 KiB (no Content-Length) is refused with 413; GET is 405."""
    base, _ = hooked

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 4096

    response = httpx.post(base + HOOK_PATH, content=chunks(), timeout=10)
    assert response.status_code == 413
    response = httpx.get(base + HOOK_PATH, timeout=10)
    assert (response.status_code, response.headers["allow"]) == (405, "POST")


# -- websocket ------------------------------------------------------------------------------


WS_APP = """
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.responses import PlainTextResponse
from sessionmw import Settings
from sessionmw.asgi import DeviceSessionMiddleware

async def ws(websocket):
    await websocket.accept()
    await websocket.send_text(websocket.state.device_session.user_id)
    await websocket.close()

async def healthz(request):
    return PlainTextResponse("ok")

app = Starlette(routes=[WebSocketRoute("/ws", ws), Route("/healthz", healthz)])
app.add_middleware(DeviceSessionMiddleware, Settings.from_env())
"""


def test_websocket_under_uvicorn(tmp_path_factory: pytest.TempPathFactory, sqlite_url: str) -> None:
    """A real websocket client: accepted with a valid session, closed 1008 without."""
    import websockets.asyncio.client
    from websockets.exceptions import InvalidStatus

    folder = tmp_path_factory.mktemp("wsapp")
    (folder / "ws_example.py").write_text(WS_APP)
    port = free_port()
    env = clean_env({"SESSIONMW_BACKEND": sqlite_url, "SESSIONMW_EXEMPT_PATHS": "/healthz"})
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"

    async def talk(headers: dict[str, str]) -> Any:
        uri = f"ws://127.0.0.1:{port}/ws"
        try:
            async with websockets.asyncio.client.connect(uri, additional_headers=headers) as ws:
                return await ws.recv()
        except InvalidStatus as exc:
            return exc.response.status_code

    with running(uvicorn("ws_example:app", port), env, port=port):
        assert asyncio.run(talk({HEADER: VALID})) == "user-1"
        # uvicorn answers a websocket closed before accept with HTTP 403.
        assert asyncio.run(talk({HEADER: REVOKED})) == 403
        assert asyncio.run(talk({})) == 403


# -- coalescing under load --------------------------------------------------------------------

CLIENTS = 50
SLOW_ID = "s-slow-coalesced"


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_one_backend_call_for_fifty_simultaneous_requests(example: str) -> None:
    """50 requests in flight for one uncached ID under one uvicorn worker: one lookup."""
    port = free_port()
    with SlowAuthService() as service:
        answers = simultaneous_gets(
            uvicorn(EXAMPLES[example], port), port, service, SLOW_ID, CLIENTS
        )
    assert len(answers) == CLIENTS
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers[:1]
    bodies = [json.loads(answer.split(b"\r\n\r\n", 1)[1]) for answer in answers]
    assert all(body == {"user_id": "u-slow", "session_id": SLOW_ID} for body in bodies)
    assert service.calls == 1
