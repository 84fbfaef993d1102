"""The Django example as an installed-app deployment, under ``gunicorn -w 3``: sessions
in Django's own SQLite database (``SESSIONMW_BACKEND=django``), a Redis bus on a
stream of its own, the admin and DRF.

* A session every worker holds as valid is revoked from the admin (a real login, CSRF
  token, the Revoke action and its confirmation page): every worker refuses it within
  a bound.
* The same through ``manage.py sessionmw_sessions revoke`` run as its own process: the
  command publishes on the bus, so the server's workers refuse it too.
* DRF's ``/api/whoami``: a device session, a DRF token, neither, a revoked session.

Which worker answered comes from gunicorn's access log (``served_by``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from sessionmw._log import hash_id
from tests.conftest import REDIS_URL, require_service
from tests.servers import access_logged, clean_env, free_port, running
from tests.test_lifecycle_servers import HTTP, Cluster, _login

pytestmark = pytest.mark.slow

HEADER = "X-Device-Session-ID"
SETTINGS = "examples.django_app.settings"
CHANGELIST = "/admin/sessionmw/devicesession/"
#: Every worker must refuse a revoked session within this many seconds.
BOUND = 10.0

SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
User.objects.create_superuser("root", "root@example.com", "root-pw")
print(Token.objects.create(user=User.objects.create_user("alice")).key)
"""


class Deployment:
    def __init__(self, cluster: Cluster, env: dict[str, str], token: str) -> None:
        self.cluster = cluster
        self.env = env
        self.token = token

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "django", *args]
        env = {**self.env, "DJANGO_SETTINGS_MODULE": SETTINGS}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    def refused_everywhere(self, session_id: str) -> float:
        """Poll until a run of refusals covers every worker; seconds it took."""
        cluster = self.cluster
        started = time.monotonic()
        refused_by: set[int] = set()
        while True:
            if time.monotonic() - started > BOUND:
                pytest.fail(f"only workers {refused_by} refused within {BOUND}s")
            results = cluster.burst(session_id, cluster.workers * 3)
            served = cluster.pids({n for n, _, _ in results})
            for n, status, _ in sorted(results, key=lambda r: r[2]):
                refused_by = refused_by | {served[n]} if status == 401 else set()
            if len(refused_by) == cluster.workers:
                return time.monotonic() - started


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_service("redis", REDIS_URL, 6379)
    import redis

    folder = tmp_path_factory.mktemp("django-app")
    stream = f"sessionmw:test:django-app:{uuid.uuid4().hex}"
    env = clean_env(
        {
            "DJANGO_SQLITE_PATH": str(folder / "app.sqlite3"),
            "SESSIONMW_BACKEND": "django",
            "SESSIONMW_BUS": REDIS_URL,
            "SESSIONMW_STREAM": stream,
        }
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP],
        env={**env, "DJANGO_SETTINGS_MODULE": SETTINGS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert setup.returncode == 0, setup.stderr
    token = setup.stdout.strip().splitlines()[-1]
    port = free_port()
    log, output = folder / "access.log", folder / "output.log"
    argv = access_logged("gunicorn", "examples.django_app.wsgi:application", port, log, "-w", "3")
    try:
        with running(argv, env, port=port, output=output) as base:
            cluster = Cluster(base, port, "gunicorn", 3, log, output, "django")
            yield Deployment(cluster, env, token)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream)
        client.close()


def _admin_login(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=10)
    page = client.get("/admin/login/?next=/admin/")
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None
    done = client.post(
        "/admin/login/?next=/admin/",
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": "root",
            "password": "root-pw",
            "next": "/admin/",
        },
    )
    assert done.status_code == 302, done.text
    return client


def test_admin_revoke_is_refused_by_every_worker(deployment: Deployment) -> None:
    """Every worker holds the session as valid; the admin's Revoke action (served by
    one worker) makes every worker refuse it; another session still passes."""
    cluster = deployment.cluster
    victim = _login(cluster.base, "alice")
    bystander = _login(cluster.base, "bob")
    assert len(cluster.warm(victim)) == 3

    admin = _admin_login(cluster.base)
    try:
        listing = admin.get(CHANGELIST, params={"q": "alice"})
        assert listing.status_code == 200
        assert victim not in re.sub(r'value="[^"]*"', "", listing.text)  # hashes only
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', listing.text)
        assert csrf is not None
        form = {"action": "revoke_sessions", "_selected_action": victim, "index": "0"}
        confirm = admin.post(CHANGELIST, data={"csrfmiddlewaretoken": csrf.group(1), **form})
        # The confirmation page: the session by its hash, never its raw ID as text.
        assert confirm.status_code == 200, confirm.text
        assert '<input type="hidden" name="post" value="yes">' in confirm.text
        assert hash_id(victim) in confirm.text
        assert victim not in re.sub(r'value="[^"]*"', "", confirm.text)
        assert len(cluster.warm(victim)) == 3  # nothing revoked yet: every worker serves it
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', confirm.text)
        assert csrf is not None
        done = admin.post(
            CHANGELIST,
            data={"csrfmiddlewaretoken": csrf.group(1), **form, "post": "yes"},
            follow_redirects=True,
        )
    finally:
        admin.close()
    assert done.status_code == 200
    assert "Revoked 1 session(s)" in done.text
    took = deployment.refused_everywhere(victim)
    print(f"\nadmin revoke refused by every worker after {took * 1000:.0f} ms of polling")
    assert cluster.whoami(bystander)[1] == 200


def test_management_command_revoke_reaches_every_worker(deployment: Deployment) -> None:
    """``manage.py sessionmw_sessions revoke --session`` from another process: the
    workers learn it through the bus. Unknown session: exit 1; bad arguments: exit 2."""
    cluster = deployment.cluster
    session_id = _login(cluster.base, "carol")
    assert len(cluster.warm(session_id)) == 3
    listed = deployment.manage("sessionmw_sessions", "list", "--user", "carol")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\t")[0] == session_id
    done = deployment.manage("sessionmw_sessions", "revoke", "--session", session_id)
    assert done.returncode == 0, done.stderr
    assert session_id not in done.stdout + done.stderr
    deployment.refused_everywhere(session_id)
    unknown = deployment.manage("sessionmw_sessions", "revoke", "--session", "no-such")
    assert unknown.returncode == 1
    assert "no session" in unknown.stderr
    assert "no-such" not in unknown.stderr
    bad = deployment.manage("sessionmw_sessions", "revoke")
    assert bad.returncode == 2
    assert "one of the arguments --session --user is required" in bad.stderr


def test_drf_view_under_the_real_server(deployment: Deployment) -> None:
    """``/api/whoami``: device session, DRF token, neither, then the session revoked."""
    base = deployment.cluster.base
    session_id = _login(base, "alice")
    response = HTTP.get(f"{base}/api/whoami", headers={HEADER: session_id})
    assert (response.status_code, response.json()) == (
        200,
        {"username": "alice", "via": "device_session", "session_id": session_id},
    )
    response = HTTP.get(
        f"{base}/api/whoami", headers={"Authorization": f"Token {deployment.token}"}
    )
    assert (response.status_code, response.json()["via"]) == (200, "token")
    response = HTTP.get(f"{base}/api/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "DeviceSession"
    assert HTTP.post(f"{base}/logout", headers={HEADER: session_id}).status_code == 200
    response = HTTP.get(f"{base}/api/whoami", headers={HEADER: session_id})
    assert (response.status_code, response.json()) == (401, {"error": "invalid_session"})
    assert response.headers["www-authenticate"] == "DeviceSession"
