"""URLconf serving the invalidation hook at ``invalidation_path`` and, when
configured, the identity-provider routes at ``oidc_logout_path`` and ``ssf_path``.

Include it at the root of your URLconf::

    urlpatterns = [
        path("", include("sessionmw.contrib.django.urls")),
        ...
    ]
"""

from __future__ import annotations

from django.urls import URLPattern, path

from sessionmw.contrib.django.conf import load_settings
from sessionmw.contrib.django.views import invalidation_hook, oidc_backchannel_logout, ssf_events

app_name = "sessionmw"

_settings = load_settings()

urlpatterns: list[URLPattern] = [
    path(_settings.invalidation_path.lstrip("/"), invalidation_hook, name="invalidation"),
]
if _settings.oidc_issuer:
    urlpatterns.append(
        path(_settings.oidc_logout_path.lstrip("/"), oidc_backchannel_logout, name="oidc-logout")
    )
if _settings.ssf_issuer:
    urlpatterns.append(path(_settings.ssf_path.lstrip("/"), ssf_events, name="ssf"))
