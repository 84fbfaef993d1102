"""Views of the Django example.

The lifecycle views are plain JSON endpoints: the device session travels in a
header, never in a cookie, so CSRF does not apply to them (``csrf_exempt``).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from examples._store import login_user_id
from sessionmw import BusUnavailable
from sessionmw.contrib.django import exempt, sessions


@require_safe
def whoami(request: HttpRequest) -> JsonResponse:
    record = request.device_session  # type: ignore[attr-defined]
    return JsonResponse({"user_id": record.user_id, "session_id": record.session_id})


@exempt
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


@exempt
@csrf_exempt
@require_POST
def login(request: HttpRequest) -> JsonResponse:
    user_id = login_user_id(request.body)  # demo: authenticate here instead
    if user_id is None:
        return JsonResponse({"error": "invalid_request"}, status=400)
    return JsonResponse({"session_id": sessions().create(user_id).session_id})


@csrf_exempt
@require_POST
def logout(request: HttpRequest) -> JsonResponse:
    current = request.device_session  # type: ignore[attr-defined]
    try:
        return JsonResponse({"revoked": sessions().revoke(current.session_id)})
    except BusUnavailable:
        return _bus_unavailable()


@csrf_exempt
@require_POST
def logout_others(request: HttpRequest) -> JsonResponse:
    current = request.device_session  # type: ignore[attr-defined]
    try:
        count = sessions().revoke_user(current.user_id, keep=current.session_id)
    except BusUnavailable:
        return _bus_unavailable()
    return JsonResponse({"revoked": count})


@require_safe
def devices(request: HttpRequest) -> JsonResponse:
    current = request.device_session  # type: ignore[attr-defined]
    listed = [
        {
            "session_id": s.session_id,
            "issued_at": s.issued_at,
            "last_seen": s.last_seen,
            "current": s.session_id == current.session_id,
        }
        for s in sessions().list(current.user_id)
    ]
    return JsonResponse(listed, safe=False)


def _bus_unavailable() -> JsonResponse:
    # The store is already right; the other workers learn of it within bus_outage_ttl
    # (ttl at worst). Retrying the call is safe.
    response = JsonResponse({"error": "bus_unavailable"}, status=503)
    response["Retry-After"] = "1"
    return response
