"""Views of the Django example."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from sessionmw.contrib.django import exempt


def whoami(request: HttpRequest) -> JsonResponse:
    record = request.device_session  # type: ignore[attr-defined]
    return JsonResponse({"user_id": record.user_id, "session_id": record.session_id})


@exempt
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
