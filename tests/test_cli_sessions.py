"""``sessionmw sessions ...``: a missing driver, a missing table and ``migrate``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sessionmw.backends.sql import SQLBackend
from tests.servers import ROOT, clean_env
from tests.test_cli import run

# -- a missing driver ------------------------------------------------------------------

_WITHOUT = textwrap.dedent(
    """
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None
    from sessionmw.cli import main
    sys.exit(main({argv!r}))
    """
)

PG = "postgresql://postgres@127.0.0.1:1/test"
ACTIONS = [
    ["create", "--user", "u"],
    ["create", "--user", "u", "--create-schema"],
    ["list"],
    ["revoke", "--session", "s"],
    ["migrate"],
]


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize(
    ("url", "blocked", "extra"),
    [
        (PG, ("psycopg", "psycopg2"), "postgres"),
        (PG + "?table=other", ("psycopg", "psycopg2"), "postgres"),
        ("sqlite:///unused.db", ("sqlalchemy",), "sql"),
        ("redis://127.0.0.1:1/0", ("redis",), "redis"),
    ],
    ids=["postgres", "postgres-table", "sqlalchemy", "redis"],
)
def test_missing_driver_is_one_line_and_exit_2(
    tmp_path: Path, action: list[str], url: str, blocked: tuple[str, ...], extra: str
) -> None:
    """Without the store's driver every sessions command exits 2 with one line on
    stderr naming the extra to install, and no traceback."""
    argv = ["sessions", action[0], "--backend", url, *action[1:]]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT.format(blocked=list(blocked), argv=argv)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env({"PYTHONPATH": str(ROOT)}),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("sessionmw: error: ")
    assert f"pip install 'sessionmw[{extra}]'" in result.stderr
    assert not (tmp_path / "unused.db").exists()


# -- a table that does not exist ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def table_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQL URL whose ``?table=`` names a table that does not exist yet."""
    table = f"t_{uuid.uuid4().hex[:16]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cli.db'}?table={table}"
        return
    url = f"{request.getfixturevalue('postgres_url')}?table={table}"
    yield url
    cleanup = SQLBackend(url)
    cleanup.drop_schema()
    cleanup.close()


def _tables(url: str) -> set[str]:
    store = SQLBackend(url)
    try:
        return set(sa.inspect(store.engine).get_table_names())
    finally:
        store.close()


def _table(url: str) -> str:
    return url.rsplit("?table=", 1)[1]


def test_create_refuses_a_missing_named_table(
    capsys: pytest.CaptureFixture[str], table_url: str
) -> None:
    """A ``?table=`` that does not exist (a typo?) is not created behind the user's
    back: exit 2, one line saying to migrate or pass --create-schema."""
    code, out, err = run(capsys, "sessions", "create", "--backend", table_url, "--user", "u")
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "sessionmw sessions migrate --backend" in err
    assert "--create-schema" in err
    assert _table(table_url) in err
    assert _table(table_url) not in _tables(table_url)


def test_migrate_then_create(capsys: pytest.CaptureFixture[str], table_url: str) -> None:
    """``migrate`` creates the table and says so; run again it has nothing to do;
    then ``create`` writes to the table."""
    code, out, _ = run(capsys, "sessions", "migrate", "--backend", table_url)
    assert code == 0
    assert out == f"created table {_table(table_url)}\n"
    assert _table(table_url) in _tables(table_url)
    code, out, _ = run(capsys, "sessions", "migrate", "--backend", table_url)
    assert (code, out) == (0, "nothing to do: the schema is up to date\n")
    code, out, _ = run(capsys, "sessions", "create", "--backend", table_url, "--user", "u",
                       "--session-id", "s-1")  # fmt: skip
    assert (code, out) == (0, "s-1\n")
    store = SQLBackend(table_url)
    assert store.lookup("s-1") is not None
    store.close()


def test_create_with_create_schema(capsys: pytest.CaptureFixture[str], table_url: str) -> None:
    """``--create-schema`` creates the missing table first, noted on stderr."""
    code, out, err = run(capsys, "sessions", "create", "--backend", table_url, "--user", "u",
                         "--session-id", "s-1", "--create-schema")  # fmt: skip
    assert (code, out) == (0, "s-1\n")
    assert f"created table {_table(table_url)}" in err
    store = SQLBackend(table_url)
    assert store.lookup("s-1") is not None
    store.close()


def test_migrate_on_redis_has_nothing_to_do(
    capsys: pytest.CaptureFixture[str], redis_client: object, redis_url: str
) -> None:
    code, out, _ = run(capsys, "sessions", "migrate", "--backend", redis_url)
    assert (code, out) == (0, "nothing to do: the schema is up to date\n")


def test_migrate_has_help_and_refuses_stores_it_cannot_manage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "sessions", "migrate", "--help")
    assert code == 0
    assert out.startswith("usage: sessionmw sessions migrate")
    code, _, err = run(capsys, "sessions", "migrate", "--backend", "https://a/{session_id}")
    assert code == 2
    assert "SQL or Redis" in err
