"""Waiting for another thread or process: poll a condition until a deadline.

A bus subscriber, a server or a child process acts on its own schedule; a test
waits for the outcome by polling, never by sleeping a fixed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

__all__ = ["DEADLINE", "wait_until"]

#: Seconds: generous, only reached when something hangs (the machine is shared).
DEADLINE = 15.0


def wait_until(predicate: Callable[[], object], what: str = "", timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a polling interval that is not a bare sleep
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what or predicate}")
        pause.wait(0.005)
