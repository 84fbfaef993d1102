"""The Django middleware, sync and async capable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import resolve

from sessionmw._environ import environ_key
from sessionmw.answers import Answer
from sessionmw.contrib.django.conf import load_settings
from sessionmw.gate import Gate, gate_for
from sessionmw.records import SessionRecord

__all__ = ["DeviceSessionMiddleware", "exempt", "response_for"]

EXEMPT_ATTR = "sessionmw_exempt"
# Set on a request once its session was checked (or hit) in ``__call__``.
_CHECKED_ATTR = "_sessionmw_checked"

F = TypeVar("F", bound=Callable[..., Any])


def exempt(view: F) -> F:
    """Mark a view as not needing a device session (like ``csrf_exempt``)::

    @exempt
    def healthz(request): ...
    """
    setattr(view, EXEMPT_ATTR, True)
    return view


def _resolves_to_exempt(request: HttpRequest) -> bool:
    """Whether the request's URL resolves to an ``@exempt`` view (no view: ``False``)."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Http404:  # Resolver404: no view, so nothing exempts it
        return False
    return bool(getattr(match.func, EXEMPT_ATTR, False))


def response_for(answer: Answer) -> HttpResponse:
    """The Django response carrying a gate or hook answer (same bytes and headers)."""
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


class DeviceSessionMiddleware:
    """Answers 401/503 for every non-exempt request without a valid session.

    Add it to ``MIDDLEWARE`` (after ``SecurityMiddleware``, before
    ``CsrfViewMiddleware`` so a missing session is a 401 and not a CSRF 403)::

        MIDDLEWARE = [
            "django.middleware.security.SecurityMiddleware",
            "sessionmw.contrib.django.DeviceSessionMiddleware",
            ...
        ]

    ``settings.SESSIONMW`` is read and validated when Django builds its handler
    (start-up); a bad key raises ``ImproperlyConfigured`` naming it.

    The check runs before the view is resolved, so a URL that resolves to no view
    is checked like any other (an unauthenticated client cannot map which routes
    exist: it gets the 401, not Django's 404). Exempt: ``exempt_methods``,
    ``exempt_paths``, and URLs that resolve to an ``@exempt`` view (the hook view of
    ``sessionmw.contrib.django.urls`` is one). The URL is resolved only on a cache
    miss: a cached valid session passes without it. Under ASGI the lookup on a miss
    is awaited (``alookup``) and never blocks the event loop. The record of a valid
    session is ``request.device_session`` (``None`` on exempt views and paths).

    The URL is resolved with the URLconf known when the gate runs (``ROOT_URLCONF``,
    or ``request.urlconf`` set by an earlier middleware). If the view that finally
    runs is not the ``@exempt`` one resolved then (a later middleware switched the
    URLconf), it is checked in ``process_view`` before it runs. An ``@exempt`` view
    that only resolves once a later middleware has acted (``i18n_patterns`` with
    ``LocaleMiddleware``) is checked: exempt such URLs with ``exempt_paths``.
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

    def _triage(self, request: HttpRequest) -> tuple[bool, str | None]:
        """``(must_check, header value)`` for a request, before any view is known.

        Exempt methods and paths pass; a cached valid session passes with its record;
        otherwise the URL is resolved, and only an ``@exempt`` view passes unchecked.
        """
        request.device_session = None  # type: ignore[attr-defined]
        gate = self.gate
        if not gate.started:
            gate.start()
        if gate.exempt(request.method or "", request.path_info):
            return False, None
        value = request.META.get(self._key)
        record = gate.hit(value)
        if record is not None:
            request.device_session = record  # type: ignore[attr-defined]
            setattr(request, _CHECKED_ATTR, True)
            return False, value
        return not _resolves_to_exempt(request), value

    def _accept(self, request: HttpRequest, outcome: SessionRecord | Answer) -> HttpResponse | None:
        if isinstance(outcome, Answer):
            return response_for(outcome)
        request.device_session = outcome  # type: ignore[attr-defined]
        setattr(request, _CHECKED_ATTR, True)
        return None

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        must_check, value = self._triage(request)
        if must_check:
            refusal = self._accept(request, self.gate.check(value))
            if refusal is not None:
                return refusal
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        must_check, value = self._triage(request)
        if must_check:
            refusal = self._accept(request, await self.gate.acheck(value))
            if refusal is not None:
                return refusal
        get_response = cast(
            "Callable[[HttpRequest], Awaitable[HttpResponseBase]]", self.get_response
        )
        return await get_response(request)

    def _view_needs_check(self, request: HttpRequest, view_func: Callable[..., Any]) -> bool:
        """Whether the view Django resolved still needs a check here.

        Normally not: ``__call__`` checked, or the request was exempt. Only when the
        view that finally runs is not the ``@exempt`` one ``__call__`` resolved (a later
        middleware set ``request.urlconf``) is the check made here, before the view.
        """
        if getattr(view_func, EXEMPT_ATTR, False):
            request.device_session = None  # type: ignore[attr-defined]
            return False
        return not getattr(request, _CHECKED_ATTR, False) and not self.gate.exempt(
            request.method or "", request.path_info
        )

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponse | None:
        if not self._view_needs_check(request, view_func):
            return None
        return self._accept(request, self.gate.check(request.META.get(self._key)))

    async def _aprocess_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponse | None:
        if not self._view_needs_check(request, view_func):
            return None
        return self._accept(request, await self.gate.acheck(request.META.get(self._key)))
