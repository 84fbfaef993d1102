"""Views of the Django example.

The lifecycle views are plain JSON endpoints: the device session travels in a
header, never in a cookie, so CSRF does not apply to them (``csrf_exempt``).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe
from rest_framework.authentication import TokenAuthentication
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
)
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from examples._store import login_user_id
from sessionmw import BusUnavailable, SessionRecord
from sessionmw.contrib.django import exempt, sessions
from sessionmw.contrib.drf import DeviceSessionAuthentication


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


@api_view(["GET"])
@authentication_classes([DeviceSessionAuthentication, TokenAuthentication])
@permission_classes([IsAuthenticated])
def api_whoami(request: Request) -> Response:
    """DRF: a device session (its user must exist in ``auth.User``) or a DRF token.

    The first class gives the 401's ``WWW-Authenticate: DeviceSession``."""
    record = request.auth if isinstance(request.auth, SessionRecord) else None
    return Response(
        {
            "username": request.user.get_username(),
            "via": "device_session" if record is not None else "token",
            "session_id": record.session_id if record is not None else None,
        }
    )
