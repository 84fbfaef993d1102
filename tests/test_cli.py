"""The ``sessionmw`` command line: help, usage errors, exit codes, and each command
against real stores (SQLite, Redis) and a real app under uvicorn."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionmw.backends.sql import SQLBackend
from sessionmw.cli import main
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.signing import new_secret
from tests.servers import BIN, clean_env, free_port, running, uvicorn
from tests.spec_cases import HEADER


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``sessionmw argv...`` in-process."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --help, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- help and usage ----------------------------------------------------------------------

COMMANDS = [
    [],
    ["demo"],
    ["revoke"],
    ["sessions"],
    ["sessions", "create"],
    ["sessions", "list"],
    ["sessions", "revoke"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sessionmw")
def test_help_everywhere(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """Every command and subcommand has --help, exit 0, usage on stdout."""
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert out.startswith("usage: sessionmw")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["revoke", "--hook", "http://x"], "one of the arguments --session --user --flush"),
        (["revoke", "--session", "s"], "one of the arguments --hook --bus"),
        (["revoke", "--session", "s", "--user", "u", "--bus", "redis://x"], "not allowed"),
        (["revoke", "--session", "s", "--before", "5", "--bus", "redis://x"], "--before"),
        (["revoke", "--flush", "--hook", "ftp://x", "--secret", new_secret()], "http(s) URL"),
        (["revoke", "--flush", "--hook", "http://x", "--secret", "nope"], "invalidation_secret"),
        (["revoke", "--flush", "--bus", "http://x"], "redis:// URL"),
        (["sessions", "create", "--user", "u"], "--backend"),
        (["sessions", "create", "--backend", "memory://", "--user", "u"], "SQL or Redis"),
        (["sessions", "create", "--backend", "ftp://x", "--user", "u"], "backend"),
        (["sessions", "list", "--backend", "https://auth/{session_id}"], "SQL or Redis"),
        (["sessions", "revoke", "--backend", "sqlite://"], "one of the arguments"),
        (["demo", "--port", "99999"], "port"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Bad invocations exit 2 with a message on stderr naming the problem."""
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err


def test_revoke_secret_from_environment_needed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SESSIONMW_INVALIDATION_SECRET", raising=False)
    code, _, err = run(capsys, "revoke", "--flush", "--hook", "http://127.0.0.1:1")
    assert code == 2
    assert "--secret" in err


def test_console_script_is_installed() -> None:
    result = subprocess.run([str(BIN / "sessionmw"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("sessionmw ")


# -- sessions: SQLite and Redis ----------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cli.db'}"
    else:
        request.getfixturevalue("redis_client")  # a real Redis, flushed around the test
        yield request.getfixturevalue("redis_url")


def test_sessions_create_list_revoke(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """create prints the new ID (random and URL-safe unless given); list shows it;
    revoke marks it revoked in the store; a user's sessions are revoked together."""
    code, out, _ = run(capsys, "sessions", "create", "--backend", store_url, "--user", "ann")
    assert code == 0
    generated = out.strip()
    assert len(generated) >= 24
    assert generated.replace("-", "").replace("_", "").isalnum()
    create = ["sessions", "create", "--backend", store_url]
    extra = ["--session-id", "ann-2", "--ttl", "0", "--data", '{"role": "admin"}']
    code, out, _ = run(capsys, *create, "--user", "ann", *extra)
    assert (code, out) == (0, "ann-2\n")
    run(capsys, *create, "--user", "bo", "--session-id", "bo-1")

    code, out, _ = run(capsys, "sessions", "list", "--backend", store_url, "--json")
    listed = {entry["session_id"]: entry for entry in json.loads(out)}
    assert set(listed) == {generated, "ann-2", "bo-1"}
    assert listed["ann-2"]["expires_at"] is None
    assert listed["ann-2"]["data"] == {"role": "admin"}
    assert listed[generated]["expires_at"] > listed[generated]["issued_at"]

    code, out, _ = run(capsys, "sessions", "list", "--backend", store_url, "--user", "bo")
    assert code == 0
    assert out.splitlines()[0].split() == ["SESSION", "USER", "STATUS", "EXPIRES", "ISSUED"]
    assert "bo-1" in out
    assert "ann-2" not in out

    code, out, err = run(capsys, "sessions", "revoke", "--backend", store_url, "--session", "bo-1")
    assert (code, json.loads(out)) == (0, {"revoked": 1})
    assert "sessionmw revoke" in err, "the note says how to push it"
    code, out, _ = run(capsys, "sessions", "revoke", "--backend", store_url, "--user", "ann")
    assert (code, json.loads(out)) == (0, {"revoked": 2})
    code, out, _ = run(capsys, "sessions", "list", "--backend", store_url, "--json")
    assert {entry["status"] for entry in json.loads(out)} == {"revoked"}


def test_sessions_revoke_unknown_exits_1(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    run(capsys, "sessions", "create", "--backend", sqlite_url, "--user", "u")
    code, _, err = run(capsys, "sessions", "revoke", "--backend", sqlite_url, "--session", "nope")
    assert code == 1
    assert "no such session" in err


def test_sessions_bad_id_or_data_exit_2(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    base = ["sessions", "create", "--backend", sqlite_url, "--user", "u"]
    assert run(capsys, *base, "--session-id", "has space")[0] == 2
    assert run(capsys, *base, "--data", "[1]")[0] == 2
    assert run(capsys, *base, "--data", "{not json")[0] == 2


def test_unreachable_store_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A store that does not answer is a failure (1), reported without a traceback."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = run(capsys, "sessions", "list", "--backend", url)
    assert code == 1
    assert err.startswith("sessionmw: ")
    assert "Traceback" not in err


# -- revoke --hook against a real app ---------------------------------------------------


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The Starlette example under uvicorn, a SQLite store and a hook secret."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'store.db'}"
    store = SQLBackend(url)
    store.create_schema()
    for sid, user in [("cli-a1", "a"), ("cli-a2", "a"), ("cli-b1", "b")]:
        store.put(SessionRecord(sid, user, SessionStatus.ACTIVE, None, 1000.0))
    store.close()
    secret = new_secret()
    port = free_port()
    env = clean_env({"SESSIONMW_BACKEND": url, "SESSIONMW_INVALIDATION_SECRET": secret})
    with running(uvicorn("examples.starlette_app:app", port), env, port=port) as base:
        yield {"base": base, "secret": secret, "store": url}


def _status(base: str, session_id: str) -> int:
    return httpx.get(base + "/whoami", headers={HEADER: session_id}).status_code


@pytest.mark.slow
def test_revoke_through_the_hook(
    capsys: pytest.CaptureFixture[str], app_server: dict[str, Any]
) -> None:
    """--session and --user are signed, posted and applied; the store is untouched."""
    base, secret = app_server["base"], app_server["secret"]
    assert _status(base, "cli-a1") == 200
    code, out, _ = run(capsys, "revoke", "--hook", base, "--secret", secret, "--session", "cli-a1")
    assert (code, json.loads(out)) == (0, {"applied": 1})
    assert _status(base, "cli-a1") == 401
    assert _status(base, "cli-a2") == 200
    hook = base + "/_internal/session-invalidation"
    code, out, _ = run(capsys, "revoke", "--hook", hook, "--secret", secret, "--user", "a",
                       "--before", "2000")  # fmt: skip
    assert (code, json.loads(out)) == (0, {"applied": 1})
    assert _status(base, "cli-a2") == 401
    assert _status(base, "cli-b1") == 200
    assert SQLBackend(app_server["store"]).lookup("cli-a2").status is SessionStatus.ACTIVE  # type: ignore[union-attr]


@pytest.mark.slow
def test_revoke_with_wrong_secret_exits_1(
    capsys: pytest.CaptureFixture[str], app_server: dict[str, Any]
) -> None:
    """A 401 from the hook is a failure: exit 1, the hook's answer and a hint on stderr."""
    code, out, err = run(capsys, "revoke", "--hook", app_server["base"], "--secret",
                         new_secret(), "--session", "cli-b1")  # fmt: skip
    assert code == 1
    assert out == ""
    assert "401" in err
    assert "invalid_signature" in err
    assert _status(app_server["base"], "cli-b1") == 200


@pytest.mark.slow
def test_revoke_secret_from_environment(
    capsys: pytest.CaptureFixture[str],
    app_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SESSIONMW_INVALIDATION_SECRET", f"{app_server['secret']},{new_secret()}")
    code, out, _ = run(capsys, "revoke", "--hook", app_server["base"], "--flush")
    assert (code, json.loads(out)) == (0, {"applied": 1})


def test_revoke_unreachable_hook_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "revoke", "--hook", url, "--secret", new_secret(), "--flush",
                       "--timeout", "2")  # fmt: skip
    assert code == 1
    assert "cannot reach the hook" in err


# -- revoke --bus ----------------------------------------------------------------------------


def test_revoke_on_the_bus_adds_stream_entries(
    capsys: pytest.CaptureFixture[str], redis_client: Any, redis_url: str
) -> None:
    """One XADD per event with string fields, as ``redis-cli XADD`` would write them."""
    code, out, _ = run(capsys, "revoke", "--bus", redis_url, "--session", "s-1")
    assert code == 0
    assert json.loads(out)["stream"] == "sessionmw:invalidations"
    run(capsys, "revoke", "--bus", redis_url, "--user", "u-1", "--before", "1767225600")
    run(capsys, "revoke", "--bus", redis_url, "--flush", "--stream", "other:stream")
    entries = redis_client.xrange("sessionmw:invalidations")
    assert [fields for _, fields in entries] == [
        {b"type": b"session_revoked", b"session_id": b"s-1"},
        {b"type": b"user_sessions_revoked", b"user_id": b"u-1", b"before": b"1767225600.0"},
    ]
    assert [f for _, f in redis_client.xrange("other:stream")] == [{b"type": b"flush"}]


def test_revoke_on_an_unreachable_bus_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = run(capsys, "revoke", "--bus", url, "--flush", "--timeout", "1")
    assert code == 1
    assert "cannot add to stream" in err


@pytest.mark.slow
def test_revoke_on_the_bus_reaches_a_running_app(
    capsys: pytest.CaptureFixture[str], redis_client: Any, redis_url: str, tmp_path: Path
) -> None:
    """End to end: the example under uvicorn with a Redis bus refuses a session once
    ``sessionmw revoke --bus`` has added its revocation to the stream."""
    import time

    url = f"sqlite:///{tmp_path / 'bus.db'}"
    store = SQLBackend(url)
    store.create_schema()
    store.put(SessionRecord("bus-s1", "u", SessionStatus.ACTIVE, None, None))
    store.close()
    port = free_port()
    env = clean_env({"SESSIONMW_BACKEND": url, "SESSIONMW_BUS": redis_url})
    with running(uvicorn("examples.starlette_app:app", port), env, port=port) as base:
        assert _status(base, "bus-s1") == 200
        assert run(capsys, "revoke", "--bus", redis_url, "--session", "bus-s1")[0] == 0
        deadline = time.monotonic() + 10
        while _status(base, "bus-s1") != 401:
            assert time.monotonic() < deadline, "the subscriber did not apply the event"
            time.sleep(0.05)  # deadline polling for the subscriber, not a race wait
