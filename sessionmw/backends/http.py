"""An auth service answering ``GET`` per session (``http://…/{session_id}``, ``https://…``).

``{session_id}`` in the URL is replaced by the URL-quoted ID (every reserved
character escaped, ``/`` included), always exactly one path segment: an ID made
only of dots (``.``, ``..``) has its dots percent-encoded (``%2E``), since a literal
dot segment would be resolved away and address the template's parent. 200 with a
JSON object of the record's fields: found (a ``session_id`` in the body must match
the one asked for); 404: unknown; any other status, a timeout or a connection
error: :class:`BackendUnavailable`.

Clients are built on first use: one ``httpx.Client`` for the sync path and one
``httpx.AsyncClient`` per event loop. A process that forks drops the clients it
inherited and builds its own.
"""

from __future__ import annotations

import asyncio
import functools
import math
import ssl
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from sessionmw._log import BACKEND_MALFORMED, get_logger, hash_id
from sessionmw.backends._clients import Clients
from sessionmw.backends._errors import scrub, within
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import SessionRecord, record_or_none

__all__ = ["PLACEHOLDER", "HTTPBackend", "quote_segment"]

PLACEHOLDER = "{session_id}"
_SOURCE = "http"


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client built here (building one costs ~0.1 s)."""
    return httpx.create_ssl_context()


_C = TypeVar("_C", httpx.Client, httpx.AsyncClient)


def quote_segment(session_id: str) -> str:
    """``session_id`` as one URL path segment: every reserved character escaped, and
    the dots of an all-dots ID too (``.`` and ``..`` are dot segments, which URL
    resolution removes; ``%2E`` is left as it is by httpx and by RFC 3986 clients).

    >>> quote_segment("a/b"), quote_segment(".."), quote_segment("a.b")
    ('a%2Fb', '%2E%2E', 'a.b')
    """
    if session_id.strip(".") == "":
        return "%2E" * len(session_id)
    return quote(session_id, safe="")


def _build(cls: type[_C], timeout: float) -> _C:
    return cls(timeout=timeout, follow_redirects=False, verify=_ssl_context())


class HTTPBackend:
    """Sessions served by an HTTP auth service.

    ``client``: an existing client to use instead of one built here. An
    ``httpx.Client`` serves both paths (the async one through a worker thread); an
    ``httpx.AsyncClient`` serves the async path while the sync path uses a client
    built here. ``timeout`` applies to every request either way. The caller keeps
    closing a given client.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, client: Any = None) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError("backend_timeout", f"must be a positive number, got {timeout!r}")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ConfigError("backend", "an HTTP backend needs an http:// or https:// URL")
        if PLACEHOLDER not in url:
            raise ConfigError("backend", f"the HTTP backend URL must contain {PLACEHOLDER}")
        if client is not None and not isinstance(client, (httpx.Client, httpx.AsyncClient)):
            raise ConfigError("backend", f"not an httpx client: {type(client).__name__}")
        self.url = url
        self.timeout = float(timeout)
        self._clients = Clients(
            functools.partial(_build, httpx.Client, self.timeout),
            functools.partial(_build, httpx.AsyncClient, self.timeout),
            given_sync=client if isinstance(client, httpx.Client) else None,
            given_async=client if isinstance(client, httpx.AsyncClient) else None,
        )

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        return f"<HTTPBackend {parts.scheme}://{parts.hostname}:{parts.port or ''}>"

    def url_for(self, session_id: str) -> str:
        """The URL asked for ``session_id``."""
        return self.url.replace(PLACEHOLDER, quote_segment(session_id))

    # -- clients -----------------------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        return self._clients.sync()

    def _async_client(self) -> httpx.AsyncClient:
        return self._clients.for_loop()

    def close(self) -> None:
        """Close the sync client this backend built. Async clients are closed by
        :meth:`aclose` on their own loop; those left are dropped."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close the async client of the running loop, then the sync client."""
        await self._clients.aclose()

    # -- lookups -----------------------------------------------------------------

    def _unavailable(self, exc: BaseException, session_id: str) -> BackendUnavailable:
        text = scrub(str(exc).strip(), session_id, quote_segment(session_id))
        message = f"HTTP backend unavailable: {type(exc).__name__}"
        return BackendUnavailable(f"{message}: {text}" if text else message)

    def _malformed(self, session_id: str, problem: str) -> None:
        get_logger().warning(
            BACKEND_MALFORMED, backend=_SOURCE, session=hash_id(session_id), problem=problem
        )

    def _parse(self, session_id: str, response: httpx.Response) -> SessionRecord | None:
        status = response.status_code
        if status == 404:
            return None
        if status != 200:
            raise BackendUnavailable(f"HTTP backend answered {status}")
        try:
            body = response.json()
        except (ValueError, RecursionError):
            self._malformed(session_id, "body is not valid JSON")
            return None
        if not isinstance(body, dict):
            self._malformed(session_id, "body is not a JSON object")
            return None
        if "session_id" in body and body["session_id"] != session_id:
            self._malformed(session_id, "session_id in the body does not match")
            return None
        return record_or_none(session_id, body, source=_SOURCE)

    def lookup(self, session_id: str) -> SessionRecord | None:
        try:
            response = self._sync_client().get(self.url_for(session_id), timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, session_id) from None
        return self._parse(session_id, response)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        if self._clients.sync_only:
            return await within(asyncio.to_thread(self.lookup, session_id), self.timeout, "HTTP")
        client = self._async_client()
        request = client.get(self.url_for(session_id), timeout=self.timeout)
        try:
            response = await within(request, self.timeout, "HTTP")
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, session_id) from None
        return self._parse(session_id, response)
