"""Requests/s of a Starlette hello-world with and without the session gate.

Run with ``python -m benchmarks.bench_asgi`` (``--quick`` for a shorter run,
``--no-server`` to skip the uvicorn part). Four apps, measured in the same run:

* ``bare``: the hello-world alone;
* ``sessionmw``: behind :class:`sessionmw.asgi.DeviceSessionMiddleware`, the session
  cached (the cache-hit path every request but the first takes);
* ``reference``: behind a minimal hand-written pure-ASGI middleware that finds the
  header and looks it up in a dict (the floor any pure-ASGI gate can reach);
* ``basehttp``: the same check as ``sessionmw`` written as a ``BaseHTTPMiddleware``
  (here only, as the thing not to do).

In-process: the ASGI app is called directly with a prebuilt scope and no-op
receive/send, CPU time (so other load on the machine hardly matters). Rounds are
interleaved; "vs bare" is the median over rounds of the ratio within each round.
Under uvicorn (``--loop uvloop --http httptools``, one worker) loaded by ``wrk`` when
it is installed (Debian: ``apt-get install wrk``), server and ``wrk`` pinned to
different CPUs with ``taskset`` when available. Targets: in-process >= 0.85x
bare and >= 10x the ``BaseHTTPMiddleware`` variant; under uvicorn >= 0.95x bare
(there the server's own cost dominates every variant, ``BaseHTTPMiddleware``'s too).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from benchmarks._common import format_table, median
from sessionmw.answers import Answer
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.backends import MemoryBackend
from sessionmw.gate import gate_for
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings

SESSION_ID = "bench-session-0123456789abcdef"
HEADER = "x-device-session-id"
TARGET_INPROC = 0.85
TARGET_SERVER = 0.95
TARGET_VS_BASEHTTP = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                Awaitable[None]]  # fmt: skip


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def _routes() -> list[Route]:
    return [Route("/", hello)]


def _backend() -> MemoryBackend:
    return MemoryBackend([SessionRecord(SESSION_ID, "bench-user", SessionStatus.ACTIVE)])


# One backend object, so every variant built from these settings shares one gate.
SETTINGS = Settings(backend=_backend())


class DictLookupMiddleware:
    """Reference: the least a pure-ASGI gate must do (header scan + dict lookup)."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.sessions = {SESSION_ID: SessionRecord(SESSION_ID, "bench-user", SessionStatus.ACTIVE)}
        self.header = HEADER.encode()
        self.denied = PlainTextResponse("denied", status_code=401)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = None
        for name, value in scope["headers"]:
            if name == self.header:
                record = self.sessions.get(value.decode("latin-1"))
                break
        if record is None:
            await self.denied(scope, receive, send)
            return
        scope.setdefault("state", {})["device_session"] = record
        await self.app(scope, receive, send)


class BaseHTTPGate(BaseHTTPMiddleware):
    """The same gate written the way not to: a task and a stream per request."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        gate = gate_for(SETTINGS)
        value = request.headers.get(HEADER)
        # The gate's fast path first, then the full check, as the real middleware does.
        outcome = gate.hit(value) or await gate.acheck(value)
        if isinstance(outcome, Answer):
            return Response(outcome.body, outcome.status, dict(outcome.headers))
        request.state.device_session = outcome
        return await call_next(request)


def build(variant: str) -> Starlette:
    middleware = {
        "bare": [],
        "sessionmw": [Middleware(DeviceSessionMiddleware, SETTINGS)],
        "reference": [Middleware(DictLookupMiddleware)],
        "basehttp": [Middleware(BaseHTTPGate)],
    }[variant]
    return Starlette(routes=_routes(), middleware=middleware)


VARIANTS = ("bare", "sessionmw", "reference", "basehttp")

# Module-level apps for ``uvicorn benchmarks.bench_asgi:<variant>_app``.
bare_app = build("bare")
sessionmw_app = build("sessionmw")
reference_app = build("reference")
basehttp_app = build("basehttp")


class Results(NamedTuple):
    rps: dict[str, float]  # median requests/s per app
    vs_bare: dict[str, float]  # median over rounds of (app / bare in the same round)


def _rounds(cases: dict[str, Callable[[], float]], rounds: int) -> Results:
    """Interleaved rounds (shuffled order each round); medians of rates and of ratios.

    Ratios are taken within a round, so a slow stretch of the machine (other load,
    frequency changes) hits both sides of a ratio alike.
    """
    rng = random.Random(0)
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            samples[name].append(cases[name]())
    bare = samples["bare"]
    return Results(
        {name: median(values) for name, values in samples.items()},
        {
            name: median(v / b for v, b in zip(values, bare, strict=True))
            for name, values in samples.items()
        },
    )


# -- in-process -------------------------------------------------------------------


def _scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"*/*"),
            (HEADER.encode(), SESSION_ID.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


def _requests_per_second(app: ASGI, count: int, loop: asyncio.AbstractEventLoop) -> float:
    template = _scope()

    async def run() -> float:
        # CPU time of this process, not wall time: other load on the machine then
        # barely moves the figures (the loop is single-threaded and never waits).
        start = time.process_time()
        for _ in range(count):
            await app(dict(template), _receive, _send)
        return time.process_time() - start

    gc.collect()
    return count / loop.run_until_complete(run())


def _check(app: ASGI, loop: asyncio.AbstractEventLoop) -> None:
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    loop.run_until_complete(app(_scope(), _receive, send))
    if statuses != [200]:
        raise SystemExit(f"benchmark app answered {statuses}, expected [200]")


def in_process(count: int, rounds: int) -> Results:
    loop = asyncio.new_event_loop()
    try:
        apps = {name: build(name) for name in VARIANTS}
        for app in apps.values():
            _check(app, loop)  # also warms the session into the cache
            _requests_per_second(app, count // 10, loop)
        cases: dict[str, Callable[[], float]] = {
            name: functools.partial(_requests_per_second, app, count, loop)
            for name, app in apps.items()
        }
        return _rounds(cases, rounds)
    finally:
        loop.close()


# -- under uvicorn + wrk ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling while the server boots
    raise SystemExit("uvicorn did not start")


def _pinned(argv: list[str], cpu: int) -> list[str]:
    """Server on one CPU, load generator on another, when there are two and taskset."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def _wrk(url: str, seconds: float, connections: int) -> float:
    load = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-H", f"{HEADER}: {SESSION_ID}"]
    out = subprocess.run(
        _pinned([*load, url], 1),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not match or "Non-2xx" in out:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    return float(match.group(1))


def under_uvicorn(seconds: float, rounds: int, connections: int) -> Results:
    root = Path(__file__).resolve().parent.parent
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in VARIANTS:
            port = _free_port()
            argv = [sys.executable, "-m", "uvicorn", f"benchmarks.bench_asgi:{name}_app",
                    "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                    "--http", "httptools", "--log-level", "warning", "--no-access-log"]  # fmt: skip
            proc = subprocess.Popen(_pinned(argv, 0), cwd=root, stdout=subprocess.DEVNULL)
            servers[name] = (proc, port)
        for proc, port in servers.values():
            _wait_ready(port, proc)
            _wrk(f"http://127.0.0.1:{port}/", 1, connections)  # warm-up (and cache fill)
        cases: dict[str, Callable[[], float]] = {
            name: functools.partial(_wrk, f"http://127.0.0.1:{port}/", seconds, connections)
            for name, (_, port) in servers.items()
        }
        return _rounds(cases, rounds)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(10)


# -- report ------------------------------------------------------------------------


def _report(title: str, results: Results, target: float, *, vs_basehttp: bool) -> bool:
    ratios = results.vs_bare
    rows = [
        (
            name,
            f"{rps:,.0f}",
            f"{ratios[name]:.3f}x",
            f"{ratios[name] / ratios['basehttp']:.1f}x",
        )
        for name, rps in results.rps.items()
    ]
    print(f"\n{title}")
    print(format_table(["app", "requests/s", "vs bare", "vs basehttp"], rows))
    ratio = ratios["sessionmw"]
    speedup = ratio / ratios["basehttp"]
    ok = ratio >= target and (speedup >= TARGET_VS_BASEHTTP or not vs_basehttp)
    checks = f"sessionmw: {ratio:.3f}x bare (target >= {target})"
    if vs_basehttp:
        checks += f", {speedup:.1f}x basehttp (target >= {TARGET_VS_BASEHTTP:g})"
    print(f"{checks}: " + ("met" if ok else "NOT met"))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--no-server", action="store_true", help="skip uvicorn + wrk")
    args = parser.parse_args(argv)
    count, rounds = (5_000, 5) if args.quick else (10_000, 21)
    print(f"Python {sys.version.split()[0]}; in-process: {count} requests x {rounds} rounds")
    local = in_process(count, rounds)
    ok = _report("in-process (direct ASGI calls)", local, TARGET_INPROC, vs_basehttp=True)
    if args.no_server:
        return 0 if ok else 1
    if shutil.which("wrk") is None:
        print("\nunder uvicorn: SKIPPED, wrk is not installed (apt-get install wrk)")
        return 0 if ok else 1
    seconds, server_rounds = (2.0, 3) if args.quick else (3.0, 9)
    print(f"\nuvicorn --loop uvloop --http httptools, 1 worker; wrk -t1 -c64 {seconds:g}s x "
          f"{server_rounds} rounds")  # fmt: skip
    served = under_uvicorn(seconds, server_rounds, 64)
    ok = _report("under uvicorn (wrk)", served, TARGET_SERVER, vs_basehttp=False) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
