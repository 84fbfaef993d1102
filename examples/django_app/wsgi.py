"""``gunicorn examples.django_app.wsgi:application``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from examples._store import prepare_store
from sessionmw.contrib.django import sessions

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

application = get_wsgi_application()
prepare_store(sessions().settings)  # first run: the SQL table /login writes to
