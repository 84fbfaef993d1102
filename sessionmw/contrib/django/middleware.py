"""The Django middleware, sync and async capable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from sessionmw._environ import environ_key
from sessionmw.contrib.django.conf import load_settings
from sessionmw.gate import Gate, Rejection, gate_for
from sessionmw.hook import HookResponse

__all__ = ["DeviceSessionMiddleware", "exempt", "response_for"]

EXEMPT_ATTR = "sessionmw_exempt"

F = TypeVar("F", bound=Callable[..., Any])


def exempt(view: F) -> F:
    """Mark a view as not needing a device session (like ``csrf_exempt``)::

    @exempt
    def healthz(request): ...
    """
    setattr(view, EXEMPT_ATTR, True)
    return view


def response_for(answer: Rejection | HookResponse) -> HttpResponse:
    """The Django response carrying a gate or hook answer (same bytes and headers)."""
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


class DeviceSessionMiddleware:
    """Answers 401/503 for requests to non-exempt views without a valid session.

    Add it to ``MIDDLEWARE`` (after ``SecurityMiddleware``, before
    ``CsrfViewMiddleware`` so a missing session is a 401 and not a CSRF 403)::

        MIDDLEWARE = [
            "django.middleware.security.SecurityMiddleware",
            "sessionmw.contrib.django.DeviceSessionMiddleware",
            ...
        ]

    ``settings.SESSIONMW`` is read and validated when Django builds its handler
    (start-up); a bad key raises ``ImproperlyConfigured`` naming it. The check runs
    in ``process_view``, once the view is known, so ``@exempt`` views skip it; a URL
    that resolves to no view gets Django's 404 unchecked. Under ASGI the lookup on a
    cache miss is awaited (``alookup``) and never blocks the event loop. The record
    of a valid session is ``request.device_session`` (``None`` when exempt).
    """

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]
    ) -> None:
        self.get_response = get_response
        self.settings = load_settings()
        self.gate: Gate = gate_for(self.settings)
        self._key = environ_key(self.gate.header)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
            # Django adapts process_view by its own coroutine-ness: hand it the async one.
            self.process_view = self._aprocess_view  # type: ignore[method-assign, assignment]

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        gate = self.gate
        if not gate.started:
            gate.start()
        request.device_session = None  # type: ignore[attr-defined]
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        gate = self.gate
        if not gate.started:
            gate.start()
        request.device_session = None  # type: ignore[attr-defined]
        get_response = cast(
            "Callable[[HttpRequest], Awaitable[HttpResponseBase]]", self.get_response
        )
        return await get_response(request)

    def _skips(self, request: HttpRequest, view_func: Callable[..., Any]) -> bool:
        return getattr(view_func, EXEMPT_ATTR, False) or self.gate.exempt(
            request.method or "", request.path_info
        )

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponse | None:
        if self._skips(request, view_func):
            return None
        value = request.META.get(self._key)
        record = self.gate.hit(value)
        if record is None:
            outcome = self.gate.check(value)
            if isinstance(outcome, Rejection):
                return response_for(outcome)
            record = outcome
        request.device_session = record  # type: ignore[attr-defined]
        return None

    async def _aprocess_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponse | None:
        if self._skips(request, view_func):
            return None
        value = request.META.get(self._key)
        record = self.gate.hit(value)
        if record is None:
            outcome = await self.gate.acheck(value)
            if isinstance(outcome, Rejection):
                return response_for(outcome)
            record = outcome
        request.device_session = record  # type: ignore[attr-defined]
        return None
