"""``sessionmw demo``: the whole loop on one machine in one minute.

Creates a temporary SQLite session store (the current layout, ``last_seen``
included), seeds it, serves a small Starlette app behind
:class:`~sessionmw.asgi.DeviceSessionMiddleware` with the invalidation hook enabled
(a fresh secret) and the lifecycle routes of the examples (``POST /login``,
``POST /logout``, ``POST /logout-others``, ``GET /devices``), prints self-contained
``curl`` commands (no shell variables, no files) and runs uvicorn until interrupted.
Needs the ``starlette``, ``sql`` extras and uvicorn (``pip install 'sessionmw[all]'``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sessionmw.records import SessionRecord, SessionStatus, StoredSession
from sessionmw.settings import Settings
from sessionmw.signing import new_secret, signed_request

HEADER = "X-Device-Session-ID"
SIGNATURE_TOLERANCE = 300  # seconds, both ways (Standard Webhooks)

#: (session ID, user, status) of the seeded store.
DEMO_SESSIONS = [
    ("demo-alice-laptop", "alice", SessionStatus.ACTIVE),
    ("demo-alice-phone", "alice", SessionStatus.ACTIVE),
    ("demo-bob-tablet", "bob", SessionStatus.ACTIVE),
    ("demo-bob-phone", "bob", SessionStatus.ACTIVE),
    ("demo-carol-revoked", "carol", SessionStatus.REVOKED),
]
VALID_ID = DEMO_SESSIONS[0][0]
UNKNOWN_ID = "no-such-session"
#: The session the devices and "log out my other devices" commands act from.
DEVICES_ID = "demo-bob-tablet"
#: Who the printed login command logs in (any user ID: the demo checks no password).
LOGIN_USER = "dave"
EXEMPT = ("/healthz", "/login")


def _program() -> str:
    """How to call this CLI again: ``sessionmw`` when that is on PATH, else its full path
    (the demo is often started as ``.venv/bin/sessionmw`` without activating the venv)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) != "sessionmw":
        return "sessionmw"
    full = os.path.abspath(argv0)
    on_path = shutil.which("sessionmw")
    if on_path is not None and os.path.exists(full) and os.path.samefile(on_path, full):
        return "sessionmw"
    return shlex.quote(full)


def build_app(settings: Settings) -> Any:
    """The demo's Starlette app: ``GET /whoami`` (protected), ``GET /healthz`` and the
    lifecycle routes of the examples (``POST /login`` exempt, demo only: no password)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from sessionmw.asgi import DeviceSessionMiddleware, sessions
    from sessionmw.errors import BusUnavailable

    async def whoami(request: Request) -> JSONResponse:
        record: SessionRecord = request.state.device_session
        return JSONResponse({"user_id": record.user_id, "session_id": record.session_id})

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def login(request: Request) -> JSONResponse:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            payload = None
        user_id = payload.get("user_id") if isinstance(payload, dict) else None
        if not isinstance(user_id, str) or not 0 < len(user_id) <= 256:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        session = await sessions(request).acreate(user_id)
        return JSONResponse({"session_id": session.session_id})

    async def logout(request: Request) -> JSONResponse:
        current: SessionRecord = request.state.device_session
        return JSONResponse({"revoked": await sessions(request).arevoke(current.session_id)})

    async def logout_others(request: Request) -> JSONResponse:
        current: SessionRecord = request.state.device_session
        count = await sessions(request).arevoke_user(current.user_id, keep=current.session_id)
        return JSONResponse({"revoked": count})

    async def devices(request: Request) -> JSONResponse:
        current: SessionRecord = request.state.device_session
        listed = await sessions(request).alist(current.user_id)
        return JSONResponse([
            {
                "session_id": s.session_id,
                "issued_at": s.issued_at,
                "last_seen": s.last_seen,
                "current": s.session_id == current.session_id,
            }
            for s in listed
        ])  # fmt: skip

    async def bus_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": "bus_unavailable"}, status_code=503, headers={"Retry-After": "1"}
        )

    return Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/healthz", healthz),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/logout-others", logout_others, methods=["POST"]),
            Route("/devices", devices),
        ],
        middleware=[Middleware(DeviceSessionMiddleware, settings)],
        exception_handlers={BusUnavailable: bus_unavailable},
    )


def seed(url: str) -> None:
    """Create the table (the current layout: ``last_seen``, ``idp_sid``, indexes) and
    the demo sessions, issued a minute apart (so the devices list has an order)."""
    from sessionmw.backends.sql import SQLBackend

    store = SQLBackend(url)
    try:
        store.create_schema()
        now = time.time()
        for age, (session_id, user, status) in enumerate(DEMO_SESSIONS, 1):
            issued = now - 60 * age
            store.put(
                StoredSession(session_id, user, status, now + 86400, issued, last_seen=issued)
            )
    finally:
        store.close()


def _origin(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def commands(origin: str, secret: str, hook_path: str) -> list[tuple[str, int, str]]:
    """``(description, expected status, curl command)`` for each printed step."""
    q = shlex.quote
    whoami = f"{origin}/whoami"
    headers, body = signed_request(
        secret, [{"type": "session_revoked", "session_id": VALID_ID}], timestamp=int(time.time())
    )
    until = time.strftime("%H:%M:%S", time.localtime(int(headers["webhook-timestamp"]) + 300))
    signed = " ".join(f"-H {q(f'{name}: {value}')}" for name, value in headers.items())
    bob = f"-H {q(f'{HEADER}: {DEVICES_ID}')}"
    login = json.dumps({"user_id": LOGIN_USER})
    return [
        (
            f"A valid session: answered 200 with its user "
            f'{{"user_id": "alice", "session_id": "{VALID_ID}"}}',
            200,
            f"curl -sS -i -H {q(f'{HEADER}: {VALID_ID}')} {whoami}",
        ),
        (
            'An unknown session: answered 401 {"error": "invalid_session"}',
            401,
            f"curl -sS -i -H {q(f'{HEADER}: {UNKNOWN_ID}')} {whoami}",
        ),
        (
            f"Revoke alice's laptop session with a signed event: answered 200 "
            f'{{"applied": 1}}. The signature is valid for {SIGNATURE_TOLERANCE // 60} '
            f"minutes (until {until}); sent again it is a duplicate",
            200,
            f"curl -sS -i -X POST {signed} --data-raw {q(body.decode())} {origin}{hook_path}",
        ),
        (
            f"Log in as {LOGIN_USER} (demo only: no password): answered 200 "
            '{"session_id": "..."}, a new session to send as the header',
            200,
            f"curl -sS -i -X POST -H 'Content-Type: application/json' "
            f"--data-raw {q(login)} {origin}/login",
        ),
        (
            "Bob's devices, asked from his tablet: answered 200 with his sessions, "
            'newest first, each {"session_id", "issued_at", "last_seen", "current"}',
            200,
            f"curl -sS -i {bob} {origin}/devices",
        ),
        (
            'Bob logs out his other devices from his tablet: answered 200 {"revoked": 1} '
            "(his phone; 0 when run again). Command 5 then lists the tablet only",
            200,
            f"curl -sS -i -X POST {bob} {origin}/logout-others",
        ),
    ]


def banner(origin: str, secret: str, hook_path: str, store: str) -> str:
    lines = [
        f"sessionmw demo: a Starlette app on {origin}",
        f"session store: {store} (temporary, removed on exit)",
        f"hook: POST {origin}{hook_path}, secret {secret}",
        "",
        "Seeded sessions:",
    ]
    for session_id, user, state in DEMO_SESSIONS:
        lines.append(f"  {session_id:<20} user {user:<6} {state.value}")
    lines.append("")
    lines.append("Paste these into another terminal:")
    for number, (text, status, command) in enumerate(commands(origin, secret, hook_path), 1):
        lines += ["", f"# {number}. {text} (expect HTTP {status})", command]
        if number == 3:
            lines += [
                "#    Now run command 1 again: 401. The store still says the session is",
                "#    active; the app refused it because the revocation was pushed to its cache.",
            ]
    lines += [
        "",
        "# POST /logout with a session's header revokes that session.",
        "",
        "# The CLI signs for you (a fresh timestamp each time):",
        f"{_program()} revoke --hook {origin} --secret {shlex.quote(secret)} --user alice",
        "",
        "Press Ctrl+C to stop.",
        "",
    ]
    return "\n".join(lines)


def _configure_logging() -> None:
    import structlog

    # Only the demo configures logging; the library never does.
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def run_demo(host: str, port: int) -> int:
    """Seed, print, serve until interrupted."""
    try:
        import uvicorn
    except ImportError:
        print(
            "sessionmw demo needs uvicorn, starlette and sqlalchemy: pip install 'sessionmw[all]'",
            file=sys.stderr,
        )
        return 1
    if port == 0:
        raise ValueError("the demo needs a fixed --port to print its commands")
    _configure_logging()
    secret = new_secret()
    with tempfile.TemporaryDirectory(prefix="sessionmw-demo-") as tmp:
        path = Path(tmp) / "sessions.db"
        url = f"sqlite:///{path}"
        seed(url)
        settings = Settings(backend=url, invalidation_secret=(secret,), exempt_paths=EXEMPT)
        origin = _origin(host, port)
        print(banner(origin, secret, settings.invalidation_path, str(path)), flush=True)
        config = uvicorn.Config(build_app(settings), host=host, port=port, log_level="info")
        uvicorn.Server(config).run()
    return 0
