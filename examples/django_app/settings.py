"""Django example settings.

Run with ``gunicorn examples.django_app.wsgi:application`` or
``uvicorn examples.django_app.asgi:application``; ``SESSIONMW_*`` environment
variables configure the gate (validated here, so a typo fails at start-up).

The database (users, DRF tokens, and the sessions themselves with
``SESSIONMW_BACKEND=django``) is the SQLite file ``DJANGO_SQLITE_PATH``; create its
tables once with ``django-admin migrate --settings examples.django_app.settings``.
"""

from __future__ import annotations

import os
from typing import Any

from sessionmw import Settings

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
ROOT_URLCONF = "examples.django_app.urls"
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "sessionmw.contrib.django",  # the device_sessions model, admin, sessionmw_sessions
]

# Django's usual stack; the gate right after SecurityMiddleware so that a request
# without a session is a 401 before CSRF or authentication get a say.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "sessionmw.contrib.django.DeviceSessionMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES: list[dict[str, Any]] = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_SQLITE_PATH", "django-example.sqlite3"),
    }
}

_env = Settings.from_env()
SESSIONMW = {key: getattr(_env, key) for key in Settings.keys()}  # noqa: SIM118
# The admin is a browser app (Django's login cookie, CSRF), which cannot send the
# session header; /api/ is left to DRF's authentication classes (device session or
# DRF token, see views.api_whoami).
SESSIONMW["exempt_paths"] = [*_env.exempt_paths, "/healthz", "/admin/", "/api/"]
