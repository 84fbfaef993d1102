"""URLconf of the Django example: the app's views, the DRF view, the admin and the
invalidation hook."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

from examples.django_app import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("whoami", views.whoami),
    path("healthz", views.healthz),
    path("login", views.login),
    path("logout", views.logout),
    path("logout-others", views.logout_others),
    path("devices", views.devices),
    path("api/whoami", views.api_whoami),
    path("admin/", admin.site.urls),
    path("", include("sessionmw.contrib.django.urls")),
]
