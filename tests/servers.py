"""Running the example apps under their real servers (uvicorn, gunicorn) in tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def clean_env(extra: Mapping[str, str] = ()) -> dict[str, str]:  # type: ignore[assignment]
    """The test process's environment without SESSIONMW_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONMW_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@contextmanager
def running(
    argv: list[str],
    env: Mapping[str, str],
    *,
    port: int,
    ready_path: str = "/healthz",
    timeout: float = 30.0,
) -> Iterator[str]:
    """Start a server process, wait until ``ready_path`` answers, yield its base URL."""
    base = f"http://127.0.0.1:{port}"
    # Output goes to a file, not a pipe: nobody reads a pipe while the server runs,
    # and a chatty server would block once the pipe buffer filled.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(argv, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {proc.returncode}:\n{output}")
            try:
                if httpx.get(base + ready_path, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer {ready_path} within {timeout}s")
            time.sleep(0.1)  # polling interval while the server boots, not a race wait
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def uvicorn(app: str, port: int, *extra: str) -> list[str]:
    return [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), *extra]


def gunicorn(app: str, port: int, *extra: str) -> list[str]:
    return [str(BIN / "gunicorn"), app, "--bind", f"127.0.0.1:{port}", *extra]


__all__ = ["ROOT", "clean_env", "free_port", "gunicorn", "running", "uvicorn"]
