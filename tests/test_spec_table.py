"""SPEC section 7, table-driven, through every sync/async non-ASGI adapter in-process.

WSGI and Flask run through ``webtest.TestApp``, Django through its sync ``Client``
and its ``AsyncClient`` (the middleware in async mode, using ``acheck``). Every
adapter wraps the example app of SPEC section 10, so the same inputs must give
the same status, body bytes and headers everywhere. Repeated headers reach WSGI
apps comma-joined, as every WSGI server (and Django's ASGI handler) joins them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import AsyncClient, Client, override_settings

from examples import flask_app, wsgi_app
from sessionmw import Settings
from tests import django_settings
from tests.spec_cases import (
    CASES,
    PASSED,
    RAW_CASES,
    Case,
    DownBackend,
    Result,
    seeded_backend,
    settings_for,
)

django_settings.setup()
webtest = django_settings.import_webtest()


Send = Callable[[Case], Result]

GATE_ERRORS = {"missing_session", "invalid_session", "session_backend_unavailable"}


def assert_matches(case: Case, result: Result) -> None:
    """The adapter's answer is the one the table prescribes (bytes for the gate's own)."""
    if case.status == PASSED:
        assert result.status not in (401, 503), result
        return
    assert result.status == case.status, result
    if isinstance(case.body, dict):
        if "error" in case.body:
            # The gate's own answers are byte-identical in every adapter.
            assert result.body == json.dumps(case.body).encode()
            assert result.headers["content-type"] == "application/json"
        else:
            assert json.loads(result.body) == case.body
    elif isinstance(case.body, str):
        assert result.body.decode() == case.body
    for name, value in case.expect_headers.items():
        assert result.headers.get(name) == value, (name, result.headers)


def _webtest(app: Any) -> Send:
    client = webtest.TestApp(app)

    def send(case: Case) -> Result:
        environ = {"REQUEST_METHOD": case.method, **django_settings.join_headers(case.headers)}
        request = webtest.TestRequest.blank(case.path, environ)
        response = client.do_request(request, status="*", expect_errors=True)
        headers = {name.lower(): value for name, value in response.headerlist}
        return Result(response.status_int, response.body, headers)

    return send


def _django_sync(case: Case) -> Result:
    response = Client().generic(
        case.method, case.path, **django_settings.join_headers(case.headers)
    )
    return Result(response.status_code, response.content, _headers(response))


def _django_async(case: Case) -> Result:
    async def go() -> Any:
        return await AsyncClient().request(
            **django_settings.asgi_scope(case.method, case.path, case.headers)
        )

    response = asyncio.run(go())
    return Result(response.status_code, response.content, _headers(response))


def _headers(response: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items()}


ADAPTERS = ["wsgi", "flask", "django", "django_async"]


pytestmark = pytest.mark.usefixtures("fresh_gates")


@contextmanager
def make_sender(adapter: str, backend: Any) -> Iterator[Send]:
    settings = settings_for(backend)
    if adapter == "wsgi":
        yield _webtest(wsgi_app.create_app(Settings(**settings)))
    elif adapter == "flask":
        yield _webtest(flask_app.create_app(Settings(**settings)))
    else:
        with override_settings(SESSIONMW=settings):
            yield _django_sync if adapter == "django" else _django_async


def _run(adapter: str, case: Case) -> Result:
    backend = DownBackend() if case.down else seeded_backend()
    with make_sender(adapter, backend) as send:
        return send(case)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
def test_spec_table(adapter: str, case: Case) -> None:
    """Every SPEC section 7 situation gives the prescribed status, body and headers."""
    assert_matches(case, _run(adapter, case))


@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
def test_same_answer_everywhere(case: Case) -> None:
    """All adapters answer a gate decision with the same status, bytes and headers."""
    results = {adapter: _run(adapter, case) for adapter in ADAPTERS}
    statuses = {r.status for r in results.values()}
    if case.status == PASSED:
        assert statuses.isdisjoint({401, 503}), results
        return
    assert len(statuses) == 1, results
    if case.status in (401, 503):
        assert len({r.body for r in results.values()}) == 1, results
        for name in ("content-type", "www-authenticate", "retry-after"):
            assert len({r.headers.get(name) for r in results.values()}) == 1, (name, results)
