"""Instructions per request added by the session gate, counted by valgrind.

Run with ``python -m benchmarks.bench_instructions`` (``--quick`` for fewer
requests). Wall-clock benchmarks move a few percent between runs on a shared
machine; instruction counts do not. Each variant runs in a child process under
``valgrind --tool=callgrind`` twice, with ``N1`` and ``N2`` requests; the difference
of the two totals divided by ``N2 - N1`` is the cost of one request, with start-up
and imports cancelled out. The gate's cost is then that figure minus the same
app's without the gate, measured the same way in the same run.

Variants (all in-process: the app is called with a prebuilt scope or environ and
no-op receive/send or start_response; the session is cached, so every measured
request takes the hit path):

* ASGI: a Starlette hello world, bare, behind a do-nothing pure-ASGI middleware,
  and behind :class:`sessionmw.asgi.DeviceSessionMiddleware`, with 7 and with 20
  request headers;
* WSGI: a werkzeug hello world, bare and behind
  :class:`sessionmw.wsgi.DeviceSessionMiddleware`.

With ``--bus URL`` (any bus URL: ``redis://``, ``rediss://``, ``redis+sentinel://``,
``redis+cluster://``, ``postgresql://``) the ASGI hit path is also measured with
that bus connected and idle (variant ``sessionmw-bus``: the subscriber thread runs,
blocked in its read), against the same app on ``local://``; goal: within 1%. That
comparison counts the request thread only (callgrind ``--separate-threads``): the
subscriber's own wake-ups (a blocking read that times out and is sent again, over
TLS a record layer too) follow wall-clock time, which valgrind stretches unevenly
between the two runs of a pair, so in the process total they show up as noise of
about a percent that is not work done per request. The process totals are printed
beside it. ``--bus-only`` measures just the three variants that comparison needs.

Needs valgrind (Debian: ``apt-get install valgrind``). Targets (issue "every
answer per the SPEC ..."): ASGI at most 8,500 instructions per hit, WSGI at most
5,000, and 20 headers costing little more than 7.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

from benchmarks._common import format_table

SESSION = "bench-session-0123456789abcdef"
#: The bus URL of the ``sessionmw-bus`` variant, passed to the child process.
BUS_ENV = "BENCH_INSTRUCTIONS_BUS"
_COLLECTED = re.compile(rb"Collected : (\d+)")
_TOTALS = re.compile(r"^(?:totals|summary): (\d+)", re.M)

Message = MutableMapping[str, Any]


def _headers(count: int) -> list[tuple[bytes, bytes]]:
    base = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"application/json"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"connection", b"keep-alive"),
        (b"x-request-id", b"0f8fad5b-d9cb-469f-a165-70867728950e"),
        (b"x-device-session-id", SESSION.encode()),
    ]
    extra = [(f"x-extra-{i}".encode(), b"value") for i in range(count - len(base))]
    return base[:-1] + extra + base[-1:]


def _store() -> Any:
    from sessionmw.backends import MemoryBackend
    from sessionmw.records import SessionRecord, SessionStatus

    return MemoryBackend([SessionRecord(SESSION, "u1", SessionStatus.ACTIVE, 4102444800.0, None)])


class _LookupOnly:
    """A store that can only be read: the gate then records no activity."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def lookup(self, session_id: str) -> Any:
        return self._store.lookup(session_id)

    async def alookup(self, session_id: str) -> Any:
        return await self._store.alookup(session_id)


def _backend(kind: str) -> Any:
    return _LookupOnly(_store()) if kind.endswith("-noactivity") else _store()


def _asgi_app(kind: str) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sessionmw.asgi import DeviceSessionMiddleware

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    class PassThrough:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    middleware = {
        "bare": [],
        "passthrough": [Middleware(PassThrough)],
        "sessionmw": [Middleware(DeviceSessionMiddleware, backend=_backend(kind))],
        "sessionmw-noactivity": [Middleware(DeviceSessionMiddleware, backend=_backend(kind))],
        "sessionmw-bus": [
            Middleware(
                DeviceSessionMiddleware,
                backend=_backend(kind),
                bus=os.environ.get(BUS_ENV, "local://"),
                stream=f"sessionmw:bench:{uuid.uuid4().hex}",
            )
        ],
    }[kind]
    return Starlette(routes=[Route("/hello", hello)], middleware=middleware)


def run_asgi(kind: str, headers: int, requests: int) -> None:
    app = _asgi_app(kind)
    base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/hello",
        "raw_path": b"/hello",
        "root_path": "",
        "query_string": b"",
        "headers": _headers(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    async def main() -> None:
        await app({**base, "state": {}}, receive, send)  # fills the cache, starts the bus
        if kind == "sessionmw-bus":
            await _connected()
        for _ in range(requests):
            # uvicorn gives every request a copy of the lifespan state.
            await app({**base, "state": {}}, receive, send)

    asyncio.run(main())
    assert set(sent) == {200}, sent


async def _connected(deadline: float = 120.0) -> None:
    """Until every gate's bus subscriber is connected (slow under valgrind)."""
    from sessionmw.gate import live_gates

    end = time.monotonic() + deadline
    while not all(gate.bus.connected for gate in live_gates()):
        if time.monotonic() > end:
            raise RuntimeError("the bus did not connect")
        await asyncio.sleep(0.05)  # polling the subscriber's state


def run_wsgi(kind: str, headers: int, requests: int) -> None:
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request, Response

    from sessionmw.wsgi import DeviceSessionMiddleware

    @Request.application
    def hello(request: Request) -> Response:
        return Response("hello")

    app: Callable[..., Any] = (
        hello if kind == "bare" else DeviceSessionMiddleware(hello, backend=_backend(kind))
    )
    builder = EnvironBuilder(
        path="/hello", headers=[(k.decode(), v.decode()) for k, v in _headers(headers)]
    )
    base = builder.get_environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    for _ in range(requests + 1):
        for _chunk in app(dict(base), start_response):
            pass
    assert set(statuses) == {"200 OK"}, statuses[:3]


def _count(args: list[str]) -> tuple[int, int]:
    """Instructions executed by a child running ``args`` under callgrind: the whole
    process, and its main (request) thread alone."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.bench_instructions",
            "--child",
            *args,
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, env=env, check=False)
        match = _COLLECTED.search(done.stderr)
        if done.returncode != 0 or match is None:
            raise RuntimeError(done.stderr.decode(errors="replace")[-2000:])
        with open(f"{out}-01", encoding="utf-8", errors="replace") as dump:
            main = _TOTALS.search(dump.read())
        if main is None:
            raise RuntimeError(f"no totals line in {out}-01")
        return int(match.group(1)), int(main.group(1))


def per_request(adapter: str, kind: str, headers: int, low: int, high: int) -> tuple[float, float]:
    """Instructions per request: (process total, request thread only)."""
    small = _count([adapter, kind, str(headers), str(low)])
    large = _count([adapter, kind, str(headers), str(high)])
    total, main = ((large[i] - small[i]) / (high - low) for i in (0, 1))
    return total, main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per run")
    parser.add_argument("--child", nargs=4, metavar=("ADAPTER", "KIND", "HEADERS", "N"))
    parser.add_argument("--bus", metavar="URL", help="also measure the ASGI hit path on this bus")
    parser.add_argument("--bus-only", action="store_true", help="only what --bus compares")
    args = parser.parse_args(argv)
    if args.child:
        adapter, kind, headers, requests = args.child
        runner = run_asgi if adapter == "asgi" else run_wsgi
        runner(kind, int(headers), int(requests))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    low, high = (200, 1200) if args.quick else (500, 3000)
    # Bytecode compiled once up front, so both runs of a pair import alike.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "sessionmw", "benchmarks"],
                   check=False, capture_output=True)  # fmt: skip
    figures: dict[tuple[str, str, int], float] = {}
    threads: dict[tuple[str, str, int], float] = {}
    plan = [
        ("asgi", "bare", 7),
        ("asgi", "passthrough", 7),
        ("asgi", "sessionmw", 7),
        ("asgi", "sessionmw-noactivity", 7),
        ("asgi", "bare", 20),
        ("asgi", "sessionmw", 20),
        ("wsgi", "bare", 7),
        ("wsgi", "sessionmw", 7),
        ("wsgi", "sessionmw-noactivity", 7),
    ]
    if args.bus:
        os.environ[BUS_ENV] = args.bus
        if args.bus_only:
            plan = [("asgi", "bare", 7), ("asgi", "sessionmw", 7)]
        plan.append(("asgi", "sessionmw-bus", 7))
    for adapter, kind, headers in plan:
        figures[adapter, kind, headers], threads[adapter, kind, headers] = per_request(
            adapter, kind, headers, low, high
        )
        print(f"  measured {adapter} {kind} {headers} headers", file=sys.stderr)
    rows = []
    for adapter, kind, headers in plan:
        own = figures[adapter, kind, headers]
        bare = figures[adapter, "bare", headers]
        added = own - bare
        rows.append(
            [
                f"{adapter} {kind}",
                str(headers),
                f"{own:,.0f}",
                "-" if kind == "bare" else f"{added:,.0f}",
                "-" if kind == "bare" else f"{own / bare:.3f}x",
            ]
        )
    print(format_table(["variant", "headers", "instr/request", "added vs bare", "vs bare"], rows))
    print(f"(callgrind, difference of {high} and {low} requests per run)")
    if args.bus:
        scheme = args.bus.split("://", 1)[0]
        local, bus = threads["asgi", "sessionmw", 7], threads["asgi", "sessionmw-bus", 7]
        change = (bus - local) / local
        verdict = "ok" if abs(change) <= 0.01 else "MISSED"
        print(
            f"ASGI hit path (request thread) with the bus {scheme}:// idle vs local://: "
            f"{bus:,.0f} vs {local:,.0f} instructions ({change:+.2%}; goal within 1%: {verdict})"
        )
        local, bus = figures["asgi", "sessionmw", 7], figures["asgi", "sessionmw-bus", 7]
        print(
            f"  whole process, subscriber wake-ups included: {bus:,.0f} vs {local:,.0f} "
            f"({(bus - local) / local:+.2%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
