"""An ASGI front for Django that enforces the hook's body limit before Django reads
(and the identity-provider routes' too).

Django's ASGI handler reads the whole request body (into a spooled temporary file)
before it builds the request and runs any middleware or view, so the hook view alone
could only refuse an oversized body after receiving all of it. :func:`guard` wraps
the ASGI application and answers requests to the hook URL before Django sees them
when they must be refused:

* a method other than ``POST``: 405 with ``Allow: POST``, the body unread;
* a ``Content-Length`` over 64 KiB, or one that is not a plain decimal (two headers
  included): 413 or 400 ``invalid_payload``, the body unread;
* a body that streams past 64 KiB (chunked, or longer than declared): 413, with
  reading stopped at the first chunk over the limit.

A body within the limit is handed to Django as received (one ``http.request``
message), and the hook view answers as usual. Every other request goes straight to
Django. Use it in ``asgi.py``::

    from django.core.asgi import get_asgi_application
    from sessionmw.contrib.django.asgi import guard

    application = guard(get_asgi_application())

The hook URL is found by reversing ``sessionmw:invalidation`` (the route of
``sessionmw.contrib.django.urls``) in ``ROOT_URLCONF``; it is looked up once and again
after ``settings.SESSIONMW`` or ``ROOT_URLCONF`` change (``override_settings``). A
per-request ``request.urlconf`` is not known at the ASGI level: there the view's own
limit still applies, after Django's read. Without ``invalidation_secret`` (no hook)
the guard passes everything through.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.urls import NoReverseMatch, get_script_prefix, reverse

from sessionmw.answers import METHOD_NOT_ALLOWED
from sessionmw.asgi import Message, Receive, Scope, Send, read_body, send_answer
from sessionmw.contrib.django.conf import SETTING_NAME, load_settings
from sessionmw.gate import gate_for

__all__ = ["HookBodyGuard", "guard"]

_HOOK_ROUTE = "sessionmw:invalidation"
_IDP_ROUTES = (("sessionmw:oidc-logout", "oidc_issuer"), ("sessionmw:ssf", "ssf_issuer"))

#: Any ASGI application (Django's ``ASGIHandler`` types its messages more narrowly).
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _path_of(route: str) -> str | None:
    try:
        url = reverse(route)
    except NoReverseMatch:
        return None
    prefix = get_script_prefix()
    return "/" + url[len(prefix) :] if url.startswith(prefix) else url


@functools.lru_cache(maxsize=1)
def hook_path_info() -> str | None:
    """The path (without script prefix) Django serves the hook at; ``None``: not served."""
    if not load_settings().hook_enabled:
        return None
    return _path_of(_HOOK_ROUTE)


@functools.lru_cache(maxsize=1)
def guarded_paths() -> frozenset[str]:
    """Every path the guard answers for: the hook's and, when configured, the
    identity-provider routes' (``sessionmw:oidc-logout``, ``sessionmw:ssf``)."""
    settings = load_settings()
    paths = {hook_path_info()}
    for route, key in _IDP_ROUTES:
        if getattr(settings, key):
            paths.add(_path_of(route))
    return frozenset(path for path in paths if path is not None)


@receiver(setting_changed)
def _forget_hook_path(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, "ROOT_URLCONF", "FORCE_SCRIPT_NAME"):
        hook_path_info.cache_clear()
        guarded_paths.cache_clear()


def _path_info(scope: Scope) -> str:
    # As Django's ASGI handler computes it: the path minus the script prefix.
    path: str = scope["path"]
    prefix = django_settings.FORCE_SCRIPT_NAME or scope.get("root_path", "") or ""
    return path.removeprefix(prefix) if prefix else path


class HookBodyGuard:
    """The ASGI wrapper :func:`guard` returns (``app`` is Django's ASGI handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guarded = guarded_paths()
        if not guarded or _path_info(scope) not in guarded:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await send_answer(METHOD_NOT_ALLOWED, send)
            return
        body = await read_body(scope, receive)
        if body is None:
            return  # the client went away mid-body: nobody to answer
        if body.refusal is not None:
            refusal = body.refusal
            if refusal.status == 400:  # malformed, in the route's own words
                routes = gate_for(load_settings()).routes or {}
                served = routes.get(_path_info(scope))
                refusal = getattr(served, "malformed", refusal)
            await send_answer(refusal, send)
            return
        await self.app(scope, _replay(body.body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over the body already read, then the real stream
    (where only ``http.disconnect`` is left)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def guard(application: ASGIApp) -> HookBodyGuard:
    """Wrap Django's ASGI application so the hook refuses oversized bodies unread."""
    return HookBodyGuard(application)
