"""URLconf serving the invalidation hook at ``invalidation_path``.

Include it at the root of your URLconf::

    urlpatterns = [
        path("", include("sessionmw.contrib.django.urls")),
        ...
    ]
"""

from __future__ import annotations

from django.urls import URLPattern, path

from sessionmw.contrib.django.conf import load_settings
from sessionmw.contrib.django.views import invalidation_hook

app_name = "sessionmw"

urlpatterns: list[URLPattern] = [
    path(load_settings().invalidation_path.lstrip("/"), invalidation_hook, name="invalidation"),
]
