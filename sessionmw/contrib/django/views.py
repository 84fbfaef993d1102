"""The invalidation hook as a Django view (CSRF-exempt, session-exempt)."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from sessionmw._environ import serve_hook
from sessionmw.contrib.django.conf import load_settings
from sessionmw.contrib.django.middleware import exempt, response_for
from sessionmw.gate import gate_for

__all__ = ["invalidation_hook"]


@csrf_exempt
@exempt
def invalidation_hook(request: HttpRequest) -> HttpResponse:
    """``POST`` signed invalidation events (SPEC section 8); 404 without a secret."""
    gate = gate_for(load_settings())
    if gate.hook is None:
        raise Http404("the invalidation hook is off (no invalidation_secret)")
    meta = request.META
    wsgi_input = meta.get("wsgi.input")
    if wsgi_input is not None:
        # WSGI: read the server's stream, so a chunked body is limited too.
        answer = serve_hook(
            gate.hook, meta, wsgi_input, terminated=bool(meta.get("wsgi.input_terminated"))
        )
    else:
        # ASGI: Django has read the whole body already (in front of Django,
        # sessionmw.contrib.django.asgi.guard refuses an oversized one unread); the
        # limit and the Content-Length check still apply here, before hashing.
        answer = serve_hook(gate.hook, meta, request, terminated=True)
    return response_for(answer)
