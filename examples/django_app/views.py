"""Views of the Django example."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from sessionmw.contrib.django import exempt


@require_safe
def whoami(request: HttpRequest) -> JsonResponse:
    record = request.device_session  # type: ignore[attr-defined]
    return JsonResponse({"user_id": record.user_id, "session_id": record.session_id})


@exempt
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
