"""``sessionmw demo`` as a user runs it: a subprocess, its printed commands pasted
into a real shell with real curl, each giving the answer the demo advertises."""

from __future__ import annotations

import itertools
import os
import queue
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import IO

import httpx
import pytest

from tests.servers import BIN, ROOT, clean_env, free_port, stop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


class Demo:
    def __init__(self, proc: subprocess.Popen[str], base: str) -> None:
        self.proc = proc
        self.base = base
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []

    def read_banner(self, timeout: float = 30.0) -> list[str]:
        """Lines up to "Press Ctrl+C", once the server answers."""
        deadline = time.monotonic() + timeout
        banner: list[str] = []
        while not banner or not banner[-1].startswith("Press Ctrl+C"):
            try:
                banner.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no banner from the demo:\n{''.join(banner)}") from None
        while True:
            try:
                if httpx.get(self.base + "/healthz", timeout=1).text == "ok":
                    return banner
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("the demo server did not come up")
            time.sleep(0.1)  # polling interval while the server boots, not a race wait


def _pump(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "sessionmw"), "demo", "--port", str(port)],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    running = Demo(proc, f"http://127.0.0.1:{port}")
    pump = threading.Thread(target=_pump, args=(proc.stdout, running.lines), daemon=True)
    pump.start()
    try:
        running.output = running.read_banner()
        yield running
    finally:
        stop(proc)
        pump.join(10)  # EOF once the process is gone
        proc.stdout.close()


def _steps(banner: list[str]) -> list[tuple[int, str]]:
    """(expected status, command) of each numbered step with a curl command."""
    steps = []
    for comment, command in itertools.pairwise(banner):
        match = re.search(r"\(expect HTTP (\d{3})\)$", comment)
        if match and command.startswith("curl "):
            steps.append((int(match.group(1)), command))
    return steps


def _shell(command: str) -> tuple[int, str]:
    """Run a printed command exactly as pasted into bash; (status, body)."""
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
    )
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), body


def test_banner_lists_curl_commands_without_shell_variables(demo: Demo) -> None:
    """Six self-contained commands (valid, unknown, signed revocation, login, devices,
    logout-others): no $VARIABLES, no files, one line each."""
    steps = _steps(demo.output)
    assert [status for status, _ in steps] == [200, 401, 200, 200, 200, 200]
    assert [command.split()[-1].rsplit("/", 1)[-1] for _, command in steps[3:]] == [
        "login",
        "devices",
        "logout-others",
    ]
    for _, command in steps:
        assert "$" not in command
        assert "@" not in command, "no --data @file"
    assert any("valid for 5 minutes" in line for line in demo.output)


def test_printed_commands_give_the_advertised_answers(demo: Demo) -> None:
    """Valid -> 200 with alice; unknown -> 401; signed revocation -> applied; the
    valid session is then refused (401) although the store still says active;
    the revocation pasted again is a duplicate."""
    (ok, valid), (bad, unknown), (applied, revocation) = _steps(demo.output)[:3]
    status, body = _shell(valid)
    assert (status, httpx.Response(200, content=body).json()["user_id"]) == (ok, "alice")
    assert _shell(unknown) == (bad, '{"error": "invalid_session"}')
    assert _shell(revocation) == (applied, '{"applied": 1}')
    assert _shell(valid) == (401, '{"error": "invalid_session"}')
    assert _shell(revocation) == (200, '{"applied": 0, "duplicate": true}')


def test_printed_cli_revocation_works(demo: Demo) -> None:
    """The printed ``sessionmw revoke`` line (alice, every session) is accepted."""
    (line,) = [entry for entry in demo.output if " revoke --hook " in entry]
    # Runnable as printed: the demo names its own full path when `sessionmw` is not on PATH.
    env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"applied": 1}'
    phone = "curl -sS -i -H 'X-Device-Session-ID: demo-alice-phone' " + demo.base + "/whoami"
    assert _shell(phone)[0] == 401
    bob = "curl -sS -i -H 'X-Device-Session-ID: demo-bob-tablet' " + demo.base + "/whoami"
    assert _shell(bob)[0] == 200


def test_printed_lifecycle_commands(demo: Demo) -> None:
    """Login answers a new session that passes; bob's devices are listed from his
    tablet (newest first, the tablet current); logout-others revokes his phone once
    (then 0), after which the phone is refused and the list holds the tablet only."""
    login, devices, others = (command for _, command in _steps(demo.output)[3:])
    status, body = _shell(login)
    assert status == 200
    new_id = httpx.Response(200, content=body).json()["session_id"]
    whoami = f"curl -sS -i -H 'X-Device-Session-ID: {new_id}' {demo.base}/whoami"
    status, body = _shell(whoami)
    assert (status, httpx.Response(200, content=body).json()) == (
        200,
        {"user_id": "dave", "session_id": new_id},
    )

    status, body = _shell(devices)
    listed = httpx.Response(200, content=body).json()
    assert status == 200
    assert [(d["session_id"], d["current"]) for d in listed] == [
        ("demo-bob-tablet", True),
        ("demo-bob-phone", False),
    ]
    assert all(set(d) == {"session_id", "issued_at", "last_seen", "current"} for d in listed)
    assert all(isinstance(d["last_seen"], float) for d in listed)

    assert _shell(others) == (200, '{"revoked":1}')
    assert _shell(others) == (200, '{"revoked":0}')
    phone = f"curl -sS -i -H 'X-Device-Session-ID: demo-bob-phone' {demo.base}/whoami"
    assert _shell(phone)[0] == 401
    status, body = _shell(devices)
    assert [d["session_id"] for d in httpx.Response(200, content=body).json()] == [
        "demo-bob-tablet"
    ]


def test_demo_store_has_the_lifecycle_layout(demo: Demo) -> None:
    """The demo's SQLite store has the current layout: last_seen, idp_sid, indexes."""
    (line,) = [entry for entry in demo.output if entry.startswith("session store: ")]
    path = line.removeprefix("session store: ").split(" (temporary")[0]
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(device_sessions)")}
        indexed = {
            db.execute(f"PRAGMA index_info('{row[1]}')").fetchone()[2]
            for row in db.execute("PRAGMA index_list(device_sessions)")
            if not row[1].startswith("sqlite_autoindex")
        }
    assert {"last_seen", "idp_sid"} <= columns
    assert {"user_id", "idp_sid"} <= indexed
