"""Starlette example with Prometheus metrics: ``uvicorn examples.metrics_app:app``.

Settings come from ``SESSIONMW_*`` environment variables, for instance::

    SESSIONMW_BACKEND=sqlite:///sessions.db uvicorn examples.metrics_app:app

``GET /whoami`` answers the session's user and ID; ``GET /healthz`` and
``GET /metrics`` (Prometheus text format) are exempt from the session check. Keep
``/metrics`` reachable by your Prometheus only, e.g. with a proxy rule.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sessionmw import Settings
from sessionmw.asgi import DeviceSessionMiddleware
from sessionmw.metrics import register_metrics

EXEMPT = ("/healthz", "/metrics")


async def whoami(request: Request) -> JSONResponse:
    session = request.state.device_session
    return JSONResponse({"user_id": session.user_id, "session_id": session.session_id})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def create_app(
    settings: Settings | None = None, registry: CollectorRegistry = REGISTRY
) -> DeviceSessionMiddleware:
    """The example app; settings default to the environment's, metrics go to
    ``registry`` (prometheus_client's default one unless given)."""
    settings = settings or Settings.from_env()
    missing = [path for path in EXEMPT if path not in settings.exempt_paths]
    if missing:
        settings = settings.with_changes(exempt_paths=[*settings.exempt_paths, *missing])

    async def metrics(request: Request) -> Response:
        # Scrapes are rare and the collector only reads counters: fine on the loop.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
        ]
    )
    middleware = DeviceSessionMiddleware(app, settings)
    register_metrics(registry, gates={"app": middleware.gate})
    return middleware


app = create_app()
