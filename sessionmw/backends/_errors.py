"""Error handling shared by the network backends: no raw ID in a message, and one
shape of "the store did not answer in time"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from sessionmw._log import scrub
from sessionmw.errors import BackendUnavailable

__all__ = ["scrub", "within"]

_T = TypeVar("_T")


async def within(awaitable: Awaitable[_T], timeout: float, store: str) -> _T:
    """Await ``awaitable`` for at most ``timeout`` seconds, else BackendUnavailable."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise BackendUnavailable(f"{store} backend did not answer within {timeout:g}s") from None
