"""Session stores, chosen by URL scheme (SPEC section 6).

Every backend offers ``lookup(session_id)`` and ``await alookup(session_id)``, each
returning a :class:`~sessionmw.SessionRecord` or ``None`` for an unknown session, and
raising :class:`~sessionmw.BackendUnavailable` when the store cannot answer. The
async path never blocks the event loop. Service-specific modules are imported only
when their scheme is used, so the core installs without any driver.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from sessionmw._compat import require_extra
from sessionmw.backends.memory import MemoryBackend
from sessionmw.errors import ConfigError
from sessionmw.records import SessionRecord
from sessionmw.settings import SQL_DIALECTS

__all__ = ["Backend", "MemoryBackend", "backend_from_url"]


@runtime_checkable
class Backend(Protocol):
    """What the cache needs from a session store."""

    def lookup(self, session_id: str) -> SessionRecord | None: ...

    async def alookup(self, session_id: str) -> SessionRecord | None: ...


def backend_from_url(url: str, *, timeout: float = 2.0, client: Any = None) -> Backend:
    """Build the backend a URL names.

    ``timeout`` is the ``backend_timeout`` setting. ``client`` lets a caller hand in a
    connection it already owns (a SQLAlchemy engine, a redis-py client, an httpx
    client) instead of one built from the URL.

    >>> backend_from_url("memory://")  # doctest: +ELLIPSIS
    <sessionmw.backends.memory.MemoryBackend ...>
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryBackend()
    if scheme in ("redis", "rediss", "unix"):
        with require_extra("redis", "redis", feature="the redis:// backend"):
            from sessionmw.backends.redis import RedisBackend

        return RedisBackend(url, timeout=timeout, client=client)
    if scheme in ("http", "https"):
        with require_extra("httpx", "http", feature="the http:// backend"):
            from sessionmw.backends.http import HTTPBackend

        return HTTPBackend(url, timeout=timeout, client=client)
    if scheme.split("+", 1)[0] in SQL_DIALECTS:
        with require_extra("sqlalchemy", "sql", feature="the SQL backend"):
            from sessionmw.backends.sql import SQLBackend

        return SQLBackend(url, timeout=timeout, engine=client)
    raise ConfigError("backend", f"unsupported URL scheme {scheme!r}")
