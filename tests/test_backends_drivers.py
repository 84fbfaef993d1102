"""A store whose driver is not installed fails when it is built (at start-up), with
the extra to install, never at the first lookup (SPEC section 6).

Each case runs in a fresh interpreter where the missing modules are blocked
(``sys.modules[name] = None`` makes ``import name`` fail as if it were absent), so
the modules this test process has already imported are not affected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.servers import ROOT, clean_env

_PROBE = textwrap.dedent(
    """
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None
    from sessionmw import ConfigError
    from sessionmw._compat import MissingExtra
    from sessionmw.backends import backend_from_url
    try:
        backend = backend_from_url({url!r}, timeout=0.5)
    except (MissingExtra, ConfigError) as exc:
        print(json.dumps({{"error": type(exc).__name__, "message": str(exc),
                           "import_error": isinstance(exc, ImportError)}}))
    else:
        url = getattr(getattr(backend, "_url", None), "drivername", None)
        print(json.dumps({{"built": type(backend).__name__, "driver": url}}))
    """
)


def probe(url: str, *blocked: str) -> dict[str, object]:
    """What ``backend_from_url(url)`` does in an interpreter without ``blocked``."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(url=url, blocked=list(blocked))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


PG = "postgresql://postgres@127.0.0.1:1/test"


@pytest.mark.parametrize(
    ("url", "blocked"),
    [
        (PG, ("psycopg", "psycopg2")),
        ("postgres://postgres@127.0.0.1:1/test", ("psycopg", "psycopg2")),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", ("psycopg",)),
        ("postgresql+psycopg2://postgres@127.0.0.1:1/test", ("psycopg2",)),
        (PG + "?table=other", ("psycopg", "psycopg2")),
    ],
)
def test_postgres_without_a_driver_fails_at_construction(url: str, blocked: tuple[str]) -> None:
    """No PostgreSQL driver: building the store raises an ImportError naming the
    ``postgres`` extra (port 1 is never contacted: nothing is looked up)."""
    answer = probe(url, *blocked)
    assert answer["error"] == "MissingExtra"
    assert answer["import_error"] is True
    assert "pip install 'sessionmw[postgres]'" in str(answer["message"])


def test_plain_postgres_url_uses_psycopg3_without_psycopg2() -> None:
    """``postgresql://`` picks psycopg 3 when psycopg2 is absent, and builds."""
    assert probe(PG, "psycopg2") == {"built": "SQLBackend", "driver": "postgresql+psycopg"}


@pytest.mark.parametrize(
    ("url", "blocked", "extra"),
    [
        ("sqlite:///unused.db", "sqlalchemy", "sql"),
        (PG, "sqlalchemy", "sql"),
        ("redis://127.0.0.1:1/0", "redis", "redis"),
        ("http://127.0.0.1:1/s/{session_id}", "httpx", "http"),
    ],
)
def test_missing_service_library_names_its_extra(url: str, blocked: str, extra: str) -> None:
    answer = probe(url, blocked)
    assert answer["error"] == "MissingExtra"
    assert f"pip install 'sessionmw[{extra}]'" in str(answer["message"])


def test_unknown_sql_driver_is_a_config_error() -> None:
    """A dialect SQLAlchemy does not know is refused when the store is built."""
    answer = probe("postgresql+nosuchdriver://h/db")
    assert answer["error"] == "ConfigError"
    assert "backend" in str(answer["message"])
