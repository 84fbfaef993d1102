"""Start-up failures that really stop the app (SPEC section 4: a bad setting fails at
start-up naming the key), and the hook living only where it is mounted.

Starlette builds its middleware inside the first ASGI call: under ``uvicorn
module:app`` (``--lifespan auto``) an exception there used to be taken for "lifespan
unsupported" and the server went on serving 500s. These tests run the real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from sessionmw import ConfigError, Settings
from sessionmw.asgi import DeviceSessionMiddleware, invalidation_route
from sessionmw.signing import new_secret, signed_request
from tests.conftest import free_port
from tests.servers import BIN, clean_env

pytestmark = pytest.mark.usefixtures("fresh_gates")
Completed = subprocess.CompletedProcess[str]

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from sessionmw.asgi import DeviceSessionMiddleware

async def healthz(request):
    return PlainTextResponse("ok")

app = Starlette(routes=[Route("/healthz", healthz)])
app.add_middleware(DeviceSessionMiddleware, exempt_paths=["/healthz"], {settings})
"""


def _uvicorn(
    tmp_path: Path, settings: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "badapp.py").write_text(textwrap.dedent(APP.format(settings=settings)))
    env = clean_env({"PYTHONPATH": f"{tmp_path}:{clean_env()['PYTHONPATH']}"})
    argv = [str(BIN / "uvicorn"), "badapp:app", "--port", str(free_port()), "--lifespan", "auto"]
    try:
        return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:  # still serving: the bug this test is about
        pytest.fail(f"uvicorn kept serving with {settings}: {exc.stderr!r}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ("ttl=-1", "ttl"),
        ('backend="ftp://nowhere"', "backend"),
        ('invalidation_secret="not-a-secret"', "invalidation_secret"),
        ("tll=5", "tll"),
    ],
    ids=["negative", "scheme", "secret", "misspelt"],
)
def test_uvicorn_exits_at_startup_naming_the_key(tmp_path: Path, settings: str, key: str) -> None:
    done = _uvicorn(tmp_path, settings)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"sessionmw: {key}:" in output, output
    assert "Application startup complete" not in output
    if key == "tll":
        assert "did you mean 'ttl'" in output


async def test_lifespan_reports_the_failure() -> None:
    """The ASGI side of it: lifespan.startup.failed with the message."""
    app = Starlette()
    app.add_middleware(DeviceSessionMiddleware, ttl=-1)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "ttl" in str(sent[0]["message"])


def test_built_directly_it_still_raises_at_once() -> None:
    with pytest.raises(ConfigError, match="ttl"):
        DeviceSessionMiddleware(Starlette(), ttl=-1)


def test_settings_from_env_fails_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONMW_TTL", "-1")
    with pytest.raises(ConfigError, match="ttl"):
        Settings.from_env()


async def test_moving_the_hook_closes_the_default_path() -> None:
    """``invalidation_route(settings, path)`` moves the hook: the middleware of that
    gate serves it at the new path only."""
    secret = new_secret()
    settings = Settings(invalidation_secret=secret)
    app = Starlette(routes=[invalidation_route(settings, "/hooks/sessions")])
    app.add_middleware(DeviceSessionMiddleware, settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        headers, body = signed_request(secret, [{"type": "flush"}])
        moved = await client.post("/hooks/sessions", content=body, headers=headers)
        assert (moved.status_code, moved.json()) == (200, {"applied": 1})
        headers, body = signed_request(secret, [{"type": "flush"}])
        old = await client.post(settings.invalidation_path, content=body, headers=headers)
        assert (old.status_code, old.json()) == (401, {"error": "missing_session"})


def test_route_at_the_setting_path_keeps_it_there() -> None:
    secret = new_secret()
    settings = Settings(invalidation_secret=secret)
    route = invalidation_route(settings)
    assert isinstance(route, Route)
    assert route.path == settings.invalidation_path


def test_invalidation_route_without_starlette_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["starlette"] = None
        sys.modules["starlette.routing"] = None
        from sessionmw.asgi import invalidation_route
        try:
            invalidation_route(invalidation_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(), check=True)  # fmt: skip
    assert "pip install 'sessionmw[starlette]'" in done.stdout, done.stdout + done.stderr


class _Refusing:
    """A store whose every call fails like a driver would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def lookup(self, session_id: str) -> None:
        raise self.error

    async def alookup(self, session_id: str) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError: [Errno 111]"),
        (ModuleNotFoundError("No module named 'psycopg'"), "No module named 'psycopg'"),
    ],
    ids=["refused", "no-driver"],
)
def test_backend_unavailable_is_logged_once_with_its_cause(error: Exception, expected: str) -> None:
    from structlog.testing import capture_logs

    from sessionmw.gate import Gate

    session_id = "sess-abcdef-0123456789"
    gate = Gate(Settings(backend=_Refusing(error)))
    with capture_logs() as logs:
        answer = gate.check(session_id)
    assert getattr(answer, "status", None) == 503
    lines = [e for e in logs if e["event"] == "session.backend_unavailable"]
    assert len(lines) == 1, logs
    assert expected in lines[0]["cause"]
    assert session_id not in repr(logs)
