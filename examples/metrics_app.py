"""Starlette example with Prometheus metrics: ``uvicorn examples.metrics_app:app``.

Settings come from ``SESSIONMW_*`` environment variables, for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db uvicorn examples.metrics_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` and
``GET /metrics`` (Prometheus text format) are exempt from the session check. Keep
``/metrics`` reachable by your Prometheus only, e.g. with a proxy rule.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty
directory) and call ``prometheus_client.multiprocess.mark_process_dead`` from the
``child_exit`` hook (docs/metrics.md): ``/metrics`` then answers for the whole server.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sessionmw import Settings
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.metrics import multiprocess_mode, register_metrics

EXEMPT = ("/healthz", "/metrics")


async def whoami(request: Request) -> JSONResponse:
    session = request.state.device_session
    return JSONResponse({"user_id": session.user_id, "session_id": session.session_id})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def create_app(
    settings: Settings | None = None, registry: CollectorRegistry | None = None
) -> DeviceSessionMiddleware:
    """The example app; settings default to the environment's, metrics go to
    ``registry`` (unless given: prometheus_client's default one, or in multiprocess
    mode a registry reading every worker's numbers from ``PROMETHEUS_MULTIPROC_DIR``)."""
    settings = settings or Settings.from_env()
    missing = [path for path in EXEMPT if path not in settings.exempt_paths]
    if missing:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, *missing])
    # In multiprocess mode, a registry of its own: the default one also holds
    # per-process collectors, which would repeat what the directory's files sum up.
    every_worker = registry is None and multiprocess_mode()
    exposed = registry or (CollectorRegistry() if every_worker else REGISTRY)

    async def metrics(request: Request) -> Response:
        # Scrapes are rare and cheap (counters, or a few small files): fine on the loop.
        return Response(generate_latest(exposed), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
        ]
    )
    middleware = DeviceSessionMiddleware(app, settings)
    # In multiprocess mode this only brings this worker's numbers up to date when
    # /metrics is scraped; the MultiProcessCollector after it reads every worker's.
    register_metrics(exposed, gates={"app": middleware.gate})
    if every_worker:
        MultiProcessCollector(exposed)  # type: ignore[no-untyped-call]
    return middleware


app = create_app()
