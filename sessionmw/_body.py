"""Reading a request body within a size limit, whatever the client declares.

Used by the hook (and the identity-provider routes) of every adapter. A body over
the limit is refused before it is read whole or hashed; a ``Content-Length`` that
is not a plain ASCII decimal is refused as malformed, never parsed loosely (``int()``
accepts ``" 12"``, ``"+12"``, ``"1_2"`` and ``"١٢"``; a server that joined two
headers sends ``"12, 12"``).
"""

from __future__ import annotations

from sessionmw.answers import INVALID_PAYLOAD, TOO_LARGE, Answer

__all__ = ["MAX_BODY", "BodyLimit", "declared_length"]

MAX_BODY = 64 * 1024
#: Longest Content-Length read as a number; longer digit strings are simply too large.
_MAX_DIGITS = 12
_DIGITS = frozenset(b"0123456789")


def declared_length(value: str | bytes | None, limit: int = MAX_BODY) -> int | Answer | None:
    """The declared body size, ``None`` when not declared, or the refusal to send.

    >>> declared_length("12"), declared_length(None)
    (12, None)
    >>> declared_length("1" * 40).status, declared_length("+5").status
    (413, 400)
    """
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    raw = raw.strip(b" \t")  # optional whitespace around a field value (RFC 9110)
    if not raw:
        return None
    if not _DIGITS.issuperset(raw):
        return INVALID_PAYLOAD
    if len(raw) > _MAX_DIGITS or int(raw) > limit:
        return TOO_LARGE
    return int(raw)


class BodyLimit:
    """Counts body bytes as they stream in; refuses a declared or actual excess.

    ``refusal`` is the answer to send instead of reading on (413 or 400), or
    ``None`` while the body is acceptable.

    >>> limit = BodyLimit("12")
    >>> limit.refusal is None, limit.feed(b"x" * 13), limit.refusal.status
    (True, False, 413)
    """

    __slots__ = ("_chunks", "_size", "declared", "limit", "refusal")

    def __init__(self, content_length: str | bytes | None, limit: int = MAX_BODY) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        declared = declared_length(content_length, limit)
        self.refusal: Answer | None = declared if isinstance(declared, Answer) else None
        self.declared: int | None = declared if isinstance(declared, int) else None

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    def feed(self, chunk: bytes) -> bool:
        """Add a chunk; False once the body is over the limit (stop reading then)."""
        self._size += len(chunk)
        if self._size > self.limit:
            self.refusal = TOO_LARGE
            self._chunks.clear()
            return False
        if chunk:
            self._chunks.append(chunk)
        return True

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)
