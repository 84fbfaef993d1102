"""The invalidation hook and the identity-provider routes as Django views
(CSRF-exempt, session-exempt)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from sessionmw._environ import serve_hook
from sessionmw.contrib.django.conf import load_settings
from sessionmw.contrib.django.middleware import exempt, response_for
from sessionmw.gate import gate_for

if TYPE_CHECKING:
    from sessionmw.hook import InvalidationHook
    from sessionmw.idp import Receiver

__all__ = ["invalidation_hook", "oidc_backchannel_logout", "ssf_events"]


def _served(
    receiver: InvalidationHook | Receiver | None, off: str, request: HttpRequest
) -> HttpResponse:
    """The receiver's answer to ``request`` (405, 413, 400 and the rest included); 404
    saying ``off`` when the route is not configured."""
    if receiver is None:
        raise Http404(off)
    meta = request.META
    wsgi_input = meta.get("wsgi.input")
    if wsgi_input is not None:
        # WSGI: read the server's stream, so a chunked body is limited too.
        answer = serve_hook(
            receiver, meta, wsgi_input, terminated=bool(meta.get("wsgi.input_terminated"))
        )
    else:
        # ASGI: Django has read the whole body already (in front of Django,
        # sessionmw.contrib.django.asgi.guard refuses an oversized one unread); the
        # limit and the Content-Length check still apply here (for the hook, before
        # the signature is checked).
        answer = serve_hook(receiver, meta, request, terminated=True)
    return response_for(answer)


@csrf_exempt
@exempt
def oidc_backchannel_logout(request: HttpRequest) -> HttpResponse:
    """``POST`` an OpenID Connect back-channel ``logout_token`` (SPEC section 14); 404
    without ``oidc_issuer``."""
    off = "back-channel logout is off (no oidc_issuer)"
    return _served(gate_for(load_settings()).oidc, off, request)


@csrf_exempt
@exempt
def ssf_events(request: HttpRequest) -> HttpResponse:
    """``POST`` a Security Event Token (RFC 8935 push, SPEC section 14); 404 without
    ``ssf_issuer``."""
    off = "security event push is off (no ssf_issuer)"
    return _served(gate_for(load_settings()).ssf, off, request)


@csrf_exempt
@exempt
def invalidation_hook(request: HttpRequest) -> HttpResponse:
    """``POST`` signed invalidation events (SPEC section 8); 404 without a secret or
    public key."""
    off = "the invalidation hook is off (no invalidation_secret or public key)"
    return _served(gate_for(load_settings()).hook, off, request)
