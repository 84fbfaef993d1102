"""``/docs`` of the FastAPI example in a real headless browser (Debian's Chromium driven by
Playwright), the example under a real uvicorn on a seeded SQLite store.

What a user does: open ``/docs``, click "Authorize", paste a session ID, authorize,
"Try it out" on ``GET /whoami``, "Execute", and read the answer Swagger UI shows;
then the same with a revoked session. Every request the page makes must stay on the
server's host: Swagger UI's files come from the ``swagger-ui-bundle`` package.

Skipped without Chromium locally; with ``CI=true`` a missing browser is a failure
(``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import clean_env, free_port, running, seed_store, uvicorn
from tests.spec_cases import HEADER, REVOKED, VALID

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 20_000


@pytest.fixture
def browser_api() -> tuple[Any, str]:
    """Playwright's sync API and the browser's path; skips (or fails on CI) when either
    is missing."""
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    missing = None if executable else f"Chromium is not installed ({CHROMIUM})"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - part of the dev extra
        missing = "playwright is not installed"
    if missing is not None or executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: .ci/run installs it")
        pytest.skip(str(missing))
    return sync_playwright, executable


@pytest.fixture
def example(tmp_path: Any) -> Iterator[str]:
    """``uvicorn examples.fastapi_app:app`` on a SQLite store holding the table's sessions."""
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    seed_store(url)
    port = free_port()
    env = clean_env({"SESSIONMW_BACKEND": url})
    with running(uvicorn("examples.fastapi_app:app", port), env, port=port) as base:
        yield base


def _authorize(page: Any, session_id: str) -> None:
    """Swagger UI's "Authorize" dialog: log out of a previous value, enter, authorize."""
    page.click("button.authorize")
    dialog = page.locator(".modal-ux")
    dialog.wait_for(timeout=TIMEOUT_MS)
    logout = dialog.locator("button", has_text="Logout")
    if logout.count():
        logout.first.click()
    dialog.locator("input[type=text]").fill(session_id)
    dialog.locator(".auth-btn-wrapper button", has_text="Authorize").click()
    dialog.locator("button", has_text="Close").click()
    dialog.wait_for(state="detached", timeout=TIMEOUT_MS)


def _execute(page: Any) -> tuple[int, Any, str]:
    """ "Execute" on the open ``/whoami`` operation: the status and body the page shows,
    and the header value the browser really sent."""
    from playwright.sync_api import expect

    operation = page.locator("#operations-default-whoami_whoami_get")
    with page.expect_response(lambda r: r.url.endswith("/whoami")) as answer:
        operation.locator("button.execute").click()
    sent = answer.value.request.all_headers().get(HEADER.lower(), "")
    row = operation.locator(".live-responses-table tr.response").first
    # The table is redrawn after the response arrives: wait for this response's status.
    cell = row.locator(".response-col_status")
    expect(cell).to_contain_text(str(answer.value.status), timeout=TIMEOUT_MS)
    status = cell.inner_text().split()[0]  # "401\nUndocumented": 401 is not in the schema
    body = row.locator(".highlight-code pre").first.inner_text()
    print(f"browser showed: {status} {body.strip()!r} (sent {HEADER}: {sent})")
    return int(status), json.loads(body), sent


def test_docs_authorize_and_try_it_out(browser_api: tuple[Any, str], example: str) -> None:
    """/docs loads only from the server; Authorize + Try it out on /whoami shows 200 and
    the user for a valid session, 401 ``invalid_session`` for a revoked one."""
    sync_playwright, executable = browser_api
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("request", lambda request: requested.append(request.url))
            page.goto(example + "/docs")
            page.locator("button.authorize").wait_for()
            operation = page.locator("#operations-default-whoami_whoami_get")
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()

            _authorize(page, VALID)
            status, body, sent = _execute(page)
            assert sent == VALID
            assert (status, body) == (200, {"user_id": "user-1", "session_id": VALID})

            _authorize(page, REVOKED)
            status, body, sent = _execute(page)
            assert sent == REVOKED
            assert (status, body) == (401, {"error": "invalid_session"})
        finally:
            browser.close()
    assert requested, "the page made no request"
    off_host = [url for url in requested if not url.startswith(example + "/")]
    assert off_host == [], off_host
    assert example + "/docs/assets/swagger-ui-bundle.js" in requested
