"""The Django app of sessionmw: add ``"sessionmw.contrib.django"`` to ``INSTALLED_APPS``
for the ``device_sessions`` model and its migrations, the admin, the
``sessionmw_sessions`` management command and the ``backend = "django"`` store."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["SessionMWConfig"]


class SessionMWConfig(AppConfig):
    name = "sessionmw.contrib.django"
    label = "sessionmw"
    verbose_name = "Device sessions"
