"""Error handling shared by the network backends: no raw ID in a message, and one
shape of "the store did not answer in time"."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from sessionmw.errors import BackendUnavailable

_T = TypeVar("_T")


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every whole-word occurrence of each secret (a session ID, or its
    URL-quoted form) replaced by ``<session>``: driver messages may quote parameters."""
    for secret in secrets:
        if secret:
            pattern = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
            text = re.sub(pattern, "<session>", text)
    return text


async def within(awaitable: Awaitable[_T], timeout: float, store: str) -> _T:
    """Await ``awaitable`` for at most ``timeout`` seconds, else BackendUnavailable."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise BackendUnavailable(f"{store} backend did not answer within {timeout:g}s") from None
