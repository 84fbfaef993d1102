"""sessionmw: a device-session gate for Python web apps.

Importing this package imports no web framework and no service driver; adapters
live in :mod:`sessionmw.asgi`, :mod:`sessionmw.wsgi` and :mod:`sessionmw.contrib`.
"""

from sessionmw._version import __version__
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "MemoryCache",
    "SessionRecord",
    "SessionStatus",
    "Settings",
    "__version__",
]


def __getattr__(name: str) -> object:
    # MemoryCache is imported on first use to keep `import sessionmw` light.
    if name == "MemoryCache":
        from sessionmw.cache import MemoryCache

        return MemoryCache
    raise AttributeError(f"module 'sessionmw' has no attribute {name!r}")
