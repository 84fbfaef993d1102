"""sessionmw: a device-session gate for Python web apps.

Importing this package imports no web framework and no service driver; adapters
live in :mod:`sessionmw.asgi`, :mod:`sessionmw.wsgi` and :mod:`sessionmw.contrib`.
"""

from typing import TYPE_CHECKING

from sessionmw._version import __version__
from sessionmw.errors import BackendUnavailable, BusUnavailable, ConfigError, ReadOnlyStore
from sessionmw.records import SessionRecord, SessionStatus, StoredSession
from sessionmw.settings import Settings

if TYPE_CHECKING:  # imported on first use at run time (see __getattr__)
    from sessionmw.cache import MemoryCache
    from sessionmw.sessions import Sessions

__all__ = [
    "BackendUnavailable",
    "BusUnavailable",
    "ConfigError",
    "MemoryCache",
    "ReadOnlyStore",
    "SessionRecord",
    "SessionStatus",
    "Sessions",
    "Settings",
    "StoredSession",
    "__version__",
]


def __getattr__(name: str) -> object:
    # MemoryCache is imported on first use to keep `import sessionmw` light.
    if name == "MemoryCache":
        from sessionmw.cache import MemoryCache

        return MemoryCache
    if name == "Sessions":
        from sessionmw.sessions import Sessions

        return Sessions
    raise AttributeError(f"module 'sessionmw' has no attribute {name!r}")
