"""What every example shares: the store's schema on first run and the demo login body.

Not part of the library: a real app runs ``sessionmw sessions migrate --backend URL``
once per deploy, and authenticates the user (password, SSO, ...) before it creates a
session.
"""

from __future__ import annotations

import json
import logging

from sessionmw import BackendUnavailable, ReadOnlyStore, Settings
from sessionmw.sessions import Sessions

_log = logging.getLogger(__name__)

#: Longest ``user_id`` the demo login accepts.
MAX_USER_ID = 256


def prepare_store(settings: Settings) -> None:
    """Create what the store lacks (the SQL table, its lifecycle columns and indexes),
    so that ``POST /login`` works on a fresh database; nothing when the schema is
    already there, on ``memory://``, or on an auth service (read-only here).

    Safe when several workers start at once: a worker that loses the race to create
    the table finds it created and goes on. A store that cannot be reached does not
    stop the app (the gate answers 503 until it is back): a warning says to run
    ``sessionmw sessions migrate`` once it is.
    """
    sessions = Sessions(settings)
    try:
        store = sessions.store
    except ReadOnlyStore:
        return
    try:
        if not store.schema_missing():
            return
        sessions.create_schema()
    except BackendUnavailable as exc:
        try:
            missing = store.schema_missing()  # created meanwhile by another worker?
        except BackendUnavailable:
            missing = ["?"]
        if missing:
            _log.warning(
                "could not prepare the session store (%s); once it is reachable, run "
                "`sessionmw sessions migrate --backend URL`",
                exc,
            )


def login_user_id(body: bytes) -> str | None:
    """The ``user_id`` of a demo login body ``{"user_id": "..."}``; ``None`` when the
    body is not that (the route then answers 400)."""
    try:
        payload = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        return None
    user_id = payload.get("user_id") if isinstance(payload, dict) else None
    if isinstance(user_id, str) and 0 < len(user_id) <= MAX_USER_ID:
        return user_id
    return None
