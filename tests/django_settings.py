"""Django configuration for the tests (``settings.configure``, never an env variable,
so nothing leaks into the example servers' subprocess environment)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import django
from django.conf import settings

TEST_SETTINGS: dict[str, Any] = {
    "SECRET_KEY": "tests-only",
    "DEBUG": False,
    "ALLOWED_HOSTS": ["testserver", "127.0.0.1", "localhost"],
    "ROOT_URLCONF": "examples.django_app.urls",
    "USE_TZ": True,
    "INSTALLED_APPS": [
        "django.contrib.admin",
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "django.contrib.messages",
        "rest_framework",
        "rest_framework.authtoken",
        "sessionmw.contrib.django",
    ],
    "MIDDLEWARE": [
        "django.middleware.security.SecurityMiddleware",
        "sessionmw.contrib.django.DeviceSessionMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    "TEMPLATES": [
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
    ],
    "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
    # Connected only by the tests that use a database (the django store, the admin,
    # DRF): a SQLite file per test process, migrated by those tests.
    "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ""}},
    "SESSIONMW": {"exempt_paths": ["/healthz"]},
}


def setup() -> None:
    """Configure Django once per test process."""
    if not settings.configured:
        workdir = tempfile.mkdtemp(prefix="sessionmw-django-tests-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        configured = dict(TEST_SETTINGS)
        configured["DATABASES"] = {
            "default": {
                **TEST_SETTINGS["DATABASES"]["default"],
                "NAME": str(Path(workdir) / "db.sqlite3"),
            }
        }
        settings.configure(**configured)
        django.setup()


def join_headers(headers: list[tuple[str, str]]) -> dict[str, Any]:
    """Request headers as a WSGI server stores them: ``HTTP_*`` keys, repeats comma-joined."""
    environ: dict[str, Any] = {}
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def asgi_scope(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> dict[str, Any]:
    """An ASGI scope for ``AsyncClient.request``, keeping repeated headers as sent."""
    raw = [(b"host", b"testserver")]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    scope: dict[str, Any] = {
        "method": method,
        "path": path,
        "server": ("127.0.0.1", "80"),
        "scheme": "http",
        "headers": raw,
        "query_string": "",
    }
    if body:
        from django.test.client import FakePayload

        raw.append((b"content-length", str(len(body)).encode()))
        scope["_body_file"] = FakePayload(body)
    return scope


def import_webtest() -> Any:
    """``webtest``, imported without WebOb's ``cgi`` deprecation warning (an error here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
        import webtest

    return webtest
