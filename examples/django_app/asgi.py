"""``uvicorn examples.django_app.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from examples._store import prepare_store
from sessionmw.contrib.django import sessions
from sessionmw.contrib.django.asgi import guard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

# The guard refuses an oversized hook body before Django's ASGI handler reads it
# whole (SPEC section 8); every other request goes straight to Django.
application = guard(get_asgi_application())
prepare_store(sessions().settings)  # first run: the SQL table /login writes to
