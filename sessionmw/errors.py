"""Exceptions raised by sessionmw."""

from __future__ import annotations


class SessionMWError(Exception):
    """Base class of every exception defined by sessionmw."""


class ConfigError(SessionMWError, ValueError):
    """Bad configuration, raised at start-up. ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class BackendUnavailable(SessionMWError):
    """The session store could not answer (timeout, refused connection, 5xx).

    The message never contains a raw session ID.
    """


class InvalidPayload(SessionMWError, ValueError):
    """An invalidation event or batch is malformed."""


class BusUnavailable(SessionMWError):
    """The invalidation bus could not accept an event (the store write before it, if
    any, stands: calling again is safe)."""


class ReadOnlyStore(SessionMWError):
    """A ``Sessions`` write on a store the app does not own (an ``http`` auth service)."""
