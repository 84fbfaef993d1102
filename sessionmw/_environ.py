"""Translation helpers for adapters that see a WSGI-style environ (WSGI, Flask, Django).

Framework-free: plain WSGI, Flask and Django (whose ``request.META`` is an environ
under WSGI and environ-shaped under ASGI) all read the session header and serve the
invalidation hook through these functions, so they agree byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sessionmw._body import MAX_BODY, BodyLimit
from sessionmw.answers import INVALID_PAYLOAD, METHOD_NOT_ALLOWED, Answer
from sessionmw.hook import InvalidationHook

if TYPE_CHECKING:
    from sessionmw.idp import Receiver

__all__ = ["environ_key", "hook_headers", "read_body", "serve_hook"]

_CHUNK = 16 * 1024
_HOOK_HEADERS = (
    ("webhook-id", "HTTP_WEBHOOK_ID"),
    ("webhook-timestamp", "HTTP_WEBHOOK_TIMESTAMP"),
    ("webhook-signature", "HTTP_WEBHOOK_SIGNATURE"),
    ("content-type", "CONTENT_TYPE"),  # what the identity-provider routes read
)


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def environ_key(header: str) -> str:
    """The environ key a server stores a request header under (CGI style).

    >>> environ_key("X-Device-Session-ID")
    'HTTP_X_DEVICE_SESSION_ID'

    Servers join a repeated header's values with a comma under this one key, and a
    comma is not a session ID character: a repeated header is therefore rejected as
    ``invalid_session`` by the gate's syntax check, with no cache or backend access.
    """
    return "HTTP_" + header.upper().replace("-", "_")


def read_body(
    stream: Readable, content_length: str | None, *, terminated: bool, limit: int = MAX_BODY
) -> BodyLimit | None:
    """Read a request body without reading past ``limit`` bytes.

    A declared ``Content-Length`` above the limit, or one that is not a plain ASCII
    decimal, is refused (``refusal`` set) without reading a byte.
    Without one, the body is read only when the server marks the stream as terminated
    (``wsgi.input_terminated``: a chunked body), in chunks, and cut off at
    ``limit + 1`` bytes; otherwise it is empty, as PEP 3333 demands. Returns ``None``
    when the stream fails mid-read (a client that went away).
    """
    body = BodyLimit(content_length, limit)
    if body.refused:
        return body
    if body.declared is not None:
        remaining = body.declared
    elif terminated:
        remaining = limit + 1
    else:
        return body
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, _CHUNK))
            if not chunk:
                break
            remaining -= len(chunk)
            if not body.feed(chunk):
                break
    except Exception:  # a broken or reset connection: the sender is gone
        return None
    return body


def hook_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The Standard Webhooks headers (and ``Content-Type``) of a request, under
    lower-case names."""
    return {name: environ[key] for name, key in _HOOK_HEADERS if key in environ}


def serve_hook(
    hook: InvalidationHook | Receiver,
    environ: Mapping[str, Any],
    stream: Readable,
    *,
    terminated: bool,
) -> Answer:
    """Answer one request to the invalidation hook (sync adapters).

    ``environ`` provides ``REQUEST_METHOD``, ``CONTENT_LENGTH`` and the ``HTTP_*``
    headers; ``stream`` the raw body. 405 for a method other than POST, 413 for a
    body over 64 KiB (declared or actual), else whatever the hook decides. Serves the
    identity-provider routes (any :class:`~sessionmw.idp.Receiver`) the same way.
    """
    if environ.get("REQUEST_METHOD") != "POST":
        return METHOD_NOT_ALLOWED
    body = read_body(stream, environ.get("CONTENT_LENGTH"), terminated=terminated)
    if body is None or (body.refusal is not None and body.refusal.status == 400):
        # Malformed, in the route's own words (the hook's is invalid_payload).
        malformed: Answer = getattr(hook, "malformed", INVALID_PAYLOAD)
        return malformed
    if body.refusal is not None:
        return body.refusal
    return hook.handle(hook_headers(environ), body.body)
