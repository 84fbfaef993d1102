"""``sessionmw demo``: the whole loop on one machine in one minute.

Creates a temporary SQLite session store, seeds it, serves a small Starlette app
behind :class:`~sessionmw.asgi.DeviceSessionMiddleware` with the invalidation hook
enabled (a fresh secret), prints self-contained ``curl`` commands (no shell
variables, no files) and runs uvicorn until interrupted. Needs the ``starlette``,
``sql`` extras and uvicorn (``pip install 'sessionmw[all]'``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings
from sessionmw.signing import new_secret, signed_request

HEADER = "X-Device-Session-ID"
SIGNATURE_TOLERANCE = 300  # seconds, both ways (Standard Webhooks)

#: (session ID, user, status) of the seeded store.
DEMO_SESSIONS = [
    ("demo-alice-laptop", "alice", SessionStatus.ACTIVE),
    ("demo-alice-phone", "alice", SessionStatus.ACTIVE),
    ("demo-bob-tablet", "bob", SessionStatus.ACTIVE),
    ("demo-carol-revoked", "carol", SessionStatus.REVOKED),
]
VALID_ID = DEMO_SESSIONS[0][0]
UNKNOWN_ID = "no-such-session"


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
    """The demo's Starlette app: ``GET /whoami`` (protected) and ``GET /healthz``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from sessionmw.asgi import DeviceSessionMiddleware

    async def whoami(request: Request) -> JSONResponse:
        record: SessionRecord = request.state.device_session
        return JSONResponse({"user_id": record.user_id, "session_id": record.session_id})

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/whoami", whoami), Route("/healthz", healthz)],
        middleware=[Middleware(DeviceSessionMiddleware, settings)],
    )


def seed(url: str) -> None:
    """Create the table and the demo sessions."""
    from sessionmw.backends.sql import SQLBackend

    store = SQLBackend(url)
    try:
        store.create_schema()
        now = time.time()
        for session_id, user, status in DEMO_SESSIONS:
            store.put(SessionRecord(session_id, user, status, now + 86400, now - 60))
    finally:
        store.close()


def _origin(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def commands(origin: str, secret: str, hook_path: str) -> list[tuple[str, int, str]]:
    """``(description, expected status, curl command)`` for the three steps."""
    q = shlex.quote
    whoami = f"{origin}/whoami"
    headers, body = signed_request(
        secret, [{"type": "session_revoked", "session_id": VALID_ID}], timestamp=int(time.time())
    )
    until = time.strftime("%H:%M:%S", time.localtime(int(headers["webhook-timestamp"]) + 300))
    signed = " ".join(f"-H {q(f'{name}: {value}')}" for name, value in headers.items())
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
    lines += [
        "",
        "# 4. Now run command 1 again: 401. The store still says the session is active;",
        "#    the app refused it because the revocation was pushed to its cache.",
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
        settings = Settings(backend=url, invalidation_secret=(secret,), exempt_paths=("/healthz",))
        origin = _origin(host, port)
        print(banner(origin, secret, settings.invalidation_path, str(path)), flush=True)
        config = uvicorn.Config(build_app(settings), host=host, port=port, log_level="info")
        uvicorn.Server(config).run()
    return 0
