"""Django example settings.

Run with ``gunicorn examples.django_app.wsgi:application`` or
``uvicorn examples.django_app.asgi:application``; ``SESSIONMW_*`` environment
variables configure the gate (validated here, so a typo fails at start-up).
"""

from __future__ import annotations

import os

from sessionmw import Settings

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
ROOT_URLCONF = "examples.django_app.urls"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
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
]

# Sessions and users are not used by the example; nothing reaches a database.
DATABASES: dict[str, dict[str, str]] = {}

_env = Settings.from_env()
SESSIONMW = {key: getattr(_env, key) for key in Settings.keys()}  # noqa: SIM118
SESSIONMW["exempt_paths"] = [*_env.exempt_paths, "/healthz"]
