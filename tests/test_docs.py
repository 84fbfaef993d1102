"""The docs site builds strictly, documents every setting and metric, and its
producer snippets really revoke a session on a running server."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from sessionmw import SessionRecord, SessionStatus, Settings
from sessionmw.backends import MemoryBackend
from sessionmw.gate import Gate, forget_gates

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the one the curl example shows
SESSION = SessionRecord("7f3c9b2e1d", "u-42", SessionStatus.ACTIVE, None, None)


def code_block(page: str, language: str, marker: str) -> str:
    """The fenced ``language`` block of ``docs/page`` whose first line is ``marker``."""
    text = (DOCS / page).read_text()
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        if lang == language and body.startswith(marker + "\n"):
            return str(body)
    raise AssertionError(f"no {language} block starting with {marker!r} in {page}")


def reference_rows(page: str, heading: str) -> list[list[str]]:
    """Cells of the table rows between ``heading`` and the next ``## `` heading."""
    text = (DOCS / page).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def rendered_default(key: str, value: Any) -> str:
    if key.endswith("_jwks_url"):
        return "from discovery"
    if key in ("invalidation_secret", "invalidation_public_key") or value is None:
        return "unset"
    if isinstance(value, tuple):
        return "`" + json.dumps(list(value)) + "`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_every_setting_is_documented_with_its_default_and_variable() -> None:
    """docs/configuration.md has one row per key of Settings, no more, in order,
    with the real default and the SESSIONMW_<KEY> environment variable."""
    rows = reference_rows("configuration.md", "## Reference")
    documented = [row[0].strip("`") for row in rows]
    assert documented == list(Settings.keys())
    defaults = Settings()
    for key, default, _type, variable, meaning in rows:
        name = key.strip("`")
        assert default == rendered_default(name, getattr(defaults, name)), name
        assert variable == f"`SESSIONMW_{name.upper()}`", name
        assert meaning, name


def test_every_metric_is_documented() -> None:
    """docs/metrics.md lists exactly the metric families the collector exports."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from sessionmw.metrics import register_metrics

    registry = CollectorRegistry()
    register_metrics(registry, gates=[Gate(Settings())])
    exported = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + suffix)
    text = (DOCS / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(sessionmw_\w+)` \|", text, flags=re.M))
    assert documented == exported


def test_every_page_is_in_the_nav_and_missing_ones_are_pruned() -> None:
    """Every page of docs/ is planned in mkdocs.yml's nav; the build hook keeps the
    planned pages that exist, in order, and drops the others (and empty sections)."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav_text = config.split("\nnav:\n", 1)[1]
    planned = re.findall(r":\s*([\w/-]+\.md)\s*$", nav_text, flags=re.M)
    present = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert present <= set(planned), present - set(planned)

    spec = importlib.util.spec_from_file_location("nav_hook", DOCS / "_hooks" / "nav.py")
    assert spec is not None
    assert spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    nav = [
        {"Overview": "index.md"},
        {"Frameworks": [{"A": "index.md"}, {"B": "not-written-yet.md"}]},
        {"Empty": [{"C": "not-written-yet.md"}]},
        {"Elsewhere": "https://example.org/"},
        "metrics.md",
        "gone.md",
    ]
    assert hook.prune(nav, DOCS) == [
        {"Overview": "index.md"},
        {"Frameworks": [{"A": "index.md"}]},
        {"Elsewhere": "https://example.org/"},
        "metrics.md",
    ]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` passes (warnings, broken links and anchors fail it)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it comes with the 'dev' extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()


# -- the invalidation producers, run as documented against a real server ------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[tuple[str, Gate]]:
    """A plain WSGI app behind the middleware, hook enabled, on a loopback port."""
    from sessionmw.wsgi import DeviceSessionMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    forget_gates()
    middleware = DeviceSessionMiddleware(
        app, backend=MemoryBackend([SESSION]), invalidation_secret=SECRET
    )
    server = make_server("127.0.0.1", 0, middleware, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gate = middleware.gate
    assert gate.check(SESSION.session_id) == SESSION
    try:
        yield f"http://127.0.0.1:{server.server_port}/_internal/session-invalidation", gate
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        forget_gates()


def refused(gate: Gate) -> bool:
    return not isinstance(gate.check(SESSION.session_id), SessionRecord)


def test_python_producer_with_signed_request(hook_server: tuple[str, Gate]) -> None:
    """The sessionmw.signing snippet revokes the session on a running server."""
    url, gate = hook_server
    snippet = code_block("invalidation.md", "python", "# producer: signed_request")
    exec(snippet, {"HOOK_URL": url, "SECRET": SECRET})  # noqa: S102 - our own docs
    assert refused(gate)
    assert gate.events_applied == {"session_revoked": 1}


def test_stdlib_python_producer(hook_server: tuple[str, Gate]) -> None:
    """The standard-library snippet (no sessionmw import) revokes a user's sessions."""
    url, gate = hook_server
    snippet = code_block("invalidation.md", "python", "# producer: stdlib")
    assert "sessionmw" not in snippet
    namespace: dict[str, Any] = {"HOOK_URL": url, "SECRET": SECRET}
    exec(snippet, namespace)  # noqa: S102 - our own docs
    answer = namespace["send_events"](
        url, SECRET, [{"type": "user_sessions_revoked", "user_id": "u-42"}]
    )
    assert answer == {"applied": 1}
    assert refused(gate)


def test_curl_openssl_producer(hook_server: tuple[str, Gate]) -> None:
    """The shell snippet (curl, openssl, base64, od) revokes the session."""
    tools = ("bash", "curl", "openssl", "base64", "od")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    url, gate = hook_server
    snippet = code_block("invalidation.md", "bash", "# producer: curl")
    snippet, count = re.subn(r"^HOOK=.*$", f"HOOK={url}", snippet, flags=re.M)
    assert count == 1
    assert f"SECRET='{SECRET}'" in snippet
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"applied": 1}
    assert refused(gate)
