"""Shared fixtures: real services on loopback, skipped on a developer's machine
without them and a hard failure in CI (``CI=true``); a fresh gate registry."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip (or, in CI, fail) when the service at ``url`` does not answer."""
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {urlsplit(url).netloc}; set TEST_{name.upper()}_URL"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """URL of a real Redis (database 15 by default, flushed around each test)."""
    require_service("redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def postgres_url() -> str:
    require_service("postgres", POSTGRES_URL, 5432)
    return POSTGRES_URL


@pytest.fixture
def fresh_gates() -> Iterator[None]:
    """No shared gate (:func:`sessionmw.gate.gate_for`) outlives a test or precedes it.

    Modules whose adapters share gates use it for every test:
    ``pytestmark = pytest.mark.usefixtures("fresh_gates")``.
    """
    from sessionmw.gate import forget_gates

    forget_gates()
    yield
    forget_gates()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
