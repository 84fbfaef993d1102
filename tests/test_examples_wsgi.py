"""The WSGI-world examples under their real servers, in subprocesses.

* The SPEC section 7 table against ``gunicorn examples.wsgi_app:app``,
  ``gunicorn examples.flask_app:app``, ``gunicorn examples.django_app.wsgi:application``
  (each ``--threads 4``) and ``uvicorn examples.django_app.asgi:application``, with
  raw requests (repeated headers really repeated, latin-1 bytes really sent).
* Coalescing under threads: ``gunicorn --threads 8``, 50 simultaneous requests for
  one uncached session against a slow auth service: one backend call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sessionmw import SessionRecord, SessionStatus
from sessionmw._body import MAX_BODY
from sessionmw.signing import new_secret, signed_request
from tests.servers import (
    SlowAuthService,
    clean_env,
    closed_port_url,
    free_port,
    gunicorn,
    running,
    seed_store,
    send_case,
    simultaneous_gets,
    uvicorn,
)
from tests.spec_cases import (
    CASES,
    RAW_CASES,
    Case,
)
from tests.test_spec_table import assert_matches

pytestmark = pytest.mark.slow

EXAMPLES = {
    "wsgi-gunicorn": ("examples.wsgi_app:app", "gunicorn"),
    "flask-gunicorn": ("examples.flask_app:app", "gunicorn"),
    "django-gunicorn": ("examples.django_app.wsgi:application", "gunicorn"),
    "django-uvicorn": ("examples.django_app.asgi:application", "uvicorn"),
}


SECRET = new_secret()
VICTIMS = {example: f"s-victim-{example}" for example in EXAMPLES}


def _argv(example: str, port: int, threads: int = 4) -> list[str]:
    app, server = EXAMPLES[example]
    if server == "gunicorn":
        return gunicorn(app, port, "--threads", str(threads), "--workers", "1")
    return uvicorn(app, port)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store seeded with the table's sessions, shared by every server."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'sessions.db'}"
    seed_store(
        url,
        *(SessionRecord(victim, "u-victim", SessionStatus.ACTIVE) for victim in VICTIMS.values()),
    )
    return url


@pytest.fixture(scope="module", params=list(EXAMPLES))
def servers(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[dict[Any, str]]:
    """Base URLs of one example: seeded store (False) and unreachable store (True)."""
    example = request.param
    up, down = free_port(), free_port()
    env = clean_env({"SESSIONMW_BACKEND": sqlite_url, "SESSIONMW_INVALIDATION_SECRET": SECRET})
    with (
        running(_argv(example, up), env, port=up) as ok,
        running(
            _argv(example, down),
            clean_env({"SESSIONMW_BACKEND": closed_port_url(), "SESSIONMW_BACKEND_TIMEOUT": "1"}),
            port=down,
        ) as broken,
    ):
        yield {False: ok, True: broken, "example": example}


@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
def test_spec_table_under_real_server(servers: dict[Any, str], case: Case) -> None:
    """Each example under its server gives the table's status, body and headers."""
    assert_matches(case, send_case(servers[case.down], case))


def test_hook_under_real_server(servers: dict[Any, str]) -> None:
    """A signed revocation through the example's hook (Django: CSRF on) applies at once."""
    base, victim = servers[False], VICTIMS[servers["example"]]
    whoami = base + "/whoami"
    assert httpx.get(whoami, headers={"X-Device-Session-ID": victim}).status_code == 200
    headers, body = signed_request(SECRET, [{"type": "session_revoked", "session_id": victim}])
    response = httpx.post(base + "/_internal/session-invalidation", content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"applied": 1})
    assert httpx.get(whoami, headers={"X-Device-Session-ID": victim}).status_code == 401


def test_chunked_oversize_hook_body_under_real_server(servers: dict[Any, str]) -> None:
    """A chunked (no Content-Length) body over 64 KiB is refused with 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * (MAX_BODY // 8)

    response = httpx.post(servers[False] + "/_internal/session-invalidation", content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize("example", list(EXAMPLES))
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [("SESSIONMW_TLL", "5", "SESSIONMW_TLL"), ("SESSIONMW_TTL", "-1", "ttl")],
)
def test_misconfigured_server_fails_at_startup(
    example: str, variable: str, value: str, named: str
) -> None:
    """A typo or bad value in SESSIONMW_* stops the server at start-up, naming the key."""
    port = free_port()
    with (
        pytest.raises(RuntimeError, match="server exited") as info,
        running(_argv(example, port), clean_env({variable: value}), port=port, timeout=60),
    ):
        pass
    assert f"{named}:" in str(info.value)


# -- coalescing under threads ----------------------------------------------------------

CLIENTS = 50
SLOW_ID = "s-slow-coalesced"


@pytest.mark.parametrize("example", ["wsgi-gunicorn", "flask-gunicorn", "django-gunicorn"])
def test_one_backend_call_for_fifty_simultaneous_requests(example: str) -> None:
    """50 requests in flight for one uncached ID under gunicorn --threads 8: one lookup."""
    port = free_port()
    with SlowAuthService() as service:
        answers = simultaneous_gets(
            _argv(example, port, threads=8), port, service, SLOW_ID, CLIENTS
        )
    assert len(answers) == CLIENTS
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers[:1]
    assert all(SLOW_ID.encode() in answer for answer in answers)
    assert service.calls == 1
