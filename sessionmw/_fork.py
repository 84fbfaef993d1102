"""One fork hook for the whole library.

Objects that hold locks, threads or connections register here; in a forked child
each gets ``_reset_after_fork()`` called once, before any other code of the child
runs. They are held weakly, so registering never keeps an object alive.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    def _reset_after_fork(self) -> None:
        """Drop what the parent's threads owned (locks, flights, connections)."""
        ...


_LIVE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Call ``obj._reset_after_fork()`` in every child forked while it lives."""
    _LIVE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
