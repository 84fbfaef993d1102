"""Calls/s of WSGI, Flask and Django hello-worlds with and without the session gate.

Run with ``python -m benchmarks.bench_wsgi`` (``--quick`` for a shorter run).
In-process: each app is called directly with a prebuilt environ (copied per call,
as a server builds a fresh one) and a no-op ``start_response``, its body consumed;
rounds interleaved, medians. The session is cached: this is the cache-hit path
every request but the first takes.

* ``wsgi``: a werkzeug hello-world (``Request`` in, ``Response`` out) bare and
  behind :class:`sessionmw.wsgi.DeviceSessionMiddleware`; ``wsgi-raw`` is a bare
  WSGI callable that returns a constant (the floor: it does no work of its own).
* ``flask``: a Flask view bare and with :class:`sessionmw.contrib.flask.SessionMW`.
* ``django``: a Django view through ``WSGIHandler`` with Django's usual middleware
  stack, bare and with :class:`sessionmw.contrib.django.DeviceSessionMiddleware`.

Targets: WSGI >= 0.85x bare, Flask and Django >= 0.9x bare.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks._common import format_table, interleaved_rounds, median
from sessionmw.backends import MemoryBackend
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings

SESSION_ID = "bench-session-0123456789abcdef"
TARGETS = {"wsgi": 0.85, "wsgi-raw": None, "flask": 0.9, "django": 0.9}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# One backend object, so every variant built from these settings shares one gate.
SETTINGS = Settings(
    backend=MemoryBackend([SessionRecord(SESSION_ID, "bench-user", SessionStatus.ACTIVE)])
)


def _environ() -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    environ: dict[str, Any] = EnvironBuilder(
        path="/hello", headers=[("X-Device-Session-ID", SESSION_ID)]
    ).get_environ()
    environ["HTTP_HOST"] = "localhost"
    return environ


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _timer(app: WSGIApp, environ: dict[str, Any], count: int) -> Callable[[], float]:
    """A case for ``interleaved_rounds``: CPU nanoseconds per call over ``count`` calls.

    CPU time of this process (not wall time), so other load on the machine hardly
    moves the numbers; GC is off while timing so a collection lands on no one.
    """

    def run() -> float:
        gc.collect()
        gc.disable()
        try:
            start = time.process_time_ns()
            for _ in range(count):
                body = app(environ.copy(), _start_response)
                for _chunk in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            return (time.process_time_ns() - start) / count
        finally:
            gc.enable()

    return run


def _status_of(app: WSGIApp, environ: dict[str, Any]) -> str:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    body = app(environ.copy(), start_response)
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return statuses[0]


# -- the apps ------------------------------------------------------------------------


def wsgi_apps() -> dict[str, WSGIApp]:
    from werkzeug.wrappers import Request, Response

    from sessionmw.wsgi import DeviceSessionMiddleware

    @Request.application
    def hello(request: Request) -> Response:
        return Response("hello")

    def raw(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    return {
        "wsgi": hello,
        "wsgi+sessionmw": DeviceSessionMiddleware(hello, SETTINGS),
        "wsgi-raw": raw,
        "wsgi-raw+sessionmw": DeviceSessionMiddleware(raw, SETTINGS),
    }


def flask_apps() -> dict[str, WSGIApp]:
    from flask import Flask

    from sessionmw.contrib.flask import SessionMW

    def build(gated: bool) -> Flask:
        app = Flask(f"bench{int(gated)}")
        if gated:
            SessionMW(app, settings=SETTINGS)

        @app.get("/hello")
        def hello() -> str:
            return "hello"

        return app

    return {"flask": build(False), "flask+sessionmw": build(True)}


def hello_view(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("hello", content_type="text/plain")


urlpatterns: list[Any] = []  # filled in by django_apps(); this module is the URLconf

DJANGO_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


def django_apps() -> dict[str, WSGIApp]:
    import django
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings
    from django.urls import path

    if not settings.configured:
        settings.configure(
            SECRET_KEY="bench-only",
            DEBUG=False,
            ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "django.contrib.sessions",
            ],
            DATABASES={},
            SESSIONMW={"backend": SETTINGS.backend},
        )
        django.setup()
    urlpatterns[:] = [path("hello", hello_view)]
    with override_settings(MIDDLEWARE=DJANGO_MIDDLEWARE):
        bare = WSGIHandler()
    gated_stack = [
        DJANGO_MIDDLEWARE[0],
        "sessionmw.contrib.django.DeviceSessionMiddleware",
        *DJANGO_MIDDLEWARE[1:],
    ]
    with override_settings(MIDDLEWARE=gated_stack):
        gated = WSGIHandler()
    return {"django": bare, "django+sessionmw": gated}


# -- the run -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    args = parser.parse_args(argv)
    rounds, calls = (7, 4_000) if args.quick else (21, 20_000)

    apps = {**wsgi_apps(), **flask_apps(), **django_apps()}
    environ = _environ()
    cases: dict[str, Callable[[], float]] = {}
    for name, app in apps.items():
        # Warm up and check every app answers 200 (the gated ones from the cache).
        status = _status_of(app, environ)
        assert status == "200 OK", (name, status)
        count = calls // (40 if name.startswith(("django", "flask")) else 2)
        cases[name] = _timer(app, environ, count)

    # Each round runs every pair bare, gated, gated, bare (pairs in a shuffled order,
    # via interleaved_rounds), so drift within a round hits both sides alike; the
    # ratio is the median of the per-round ratios.
    samples: dict[str, list[float]] = {name: [] for name in cases}
    ratios: dict[str, list[float]] = {base: [] for base in TARGETS}

    def pair(base: str) -> Callable[[], float]:
        def run() -> float:
            bare, gated = cases[base], cases[f"{base}+sessionmw"]
            b1, g1, g2, b2 = bare(), gated(), gated(), bare()
            samples[base] += [b1, b2]
            samples[f"{base}+sessionmw"] += [g1, g2]
            ratios[base].append((b1 + b2) / (g1 + g2))
            return 0.0

        return run

    interleaved_rounds({base: pair(base) for base in TARGETS}, rounds)
    rows = []
    ok = True
    for base, target in TARGETS.items():
        bare, gated = median(samples[base]), median(samples[f"{base}+sessionmw"])
        ratio = median(ratios[base])
        verdict = "-" if target is None else ("ok" if ratio >= target else "BELOW")
        ok = ok and verdict != "BELOW"
        rows.append(
            [
                base,
                f"{1e9 / bare:,.0f}",
                f"{1e9 / gated:,.0f}",
                f"{gated - bare:,.0f}",
                f"{ratio:.2f}x",
                "-" if target is None else f">= {target:.2f}x",
                verdict,
            ]
        )
    print(f"In-process calls/s (CPU time), cache hit, {rounds} rounds of paired runs, medians")
    print(
        format_table(
            ["app", "bare/s", "sessionmw/s", "added ns", "ratio", "target", ""],
            rows,
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
