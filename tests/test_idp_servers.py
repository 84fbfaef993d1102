"""Identity-provider logouts (SPEC section 14) through a real multi-worker server.

``uvicorn --workers 2`` running the Starlette example, a Redis bus on a stream of its
own, one SQLite store shared by the workers, and the local provider of
:mod:`tests.oidc_provider` (its JWKS fetched over HTTP by each worker). Sessions are
created in the store with an ``idp_sid`` (as an app does at login) and cached by both
workers through a kept-alive connection to each (uvicorn keeps a connection on the
worker that accepted it; which worker that is comes from the access log).

* a logout token by ``sid`` refuses exactly those sessions on every worker, others
  still pass; by ``sub``, all of the user's;
* the same token replayed to the other worker is a duplicate: 200, and not one more
  entry on the bus's stream;
* the same for CAEP SETs (202);
* the time from posting a logout token to "refused on every worker", over 30 tokens
  (printed, and recorded as ``idp_logout_p50_ms`` / ``idp_logout_p99_ms``);
* ``gunicorn -w 2`` running the Flask example (WSGI): the same effects, every worker
  observed through bursts of requests and the access log.
"""

from __future__ import annotations

import http.client
import itertools
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from sessionmw import Sessions, Settings
from tests.conftest import REDIS_URL, require_service
from tests.oidc_provider import AUDIENCE, Provider
from tests.servers import access_logged, clean_env, free_port, running, served_by

pytestmark = pytest.mark.slow

HEADER = "X-Device-Session-ID"
LOGOUT_PATH = "/_internal/oidc-backchannel-logout"
SSF_PATH = "/_internal/ssf"
FORM = "application/x-www-form-urlencoded"
WORKERS = 2
#: Every worker must refuse a logged-out session within this many seconds.
PROPAGATION_BOUND = 2.0


@dataclass
class Cluster:
    port: int
    log: Path
    output: Path
    store_url: str
    stream: str
    redis: Any
    op: Provider
    conns: dict[int, http.client.HTTPConnection] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def connect_every_worker(self, deadline: float = 20.0) -> None:
        """One kept-alive connection per worker (PID -> connection)."""
        end = time.monotonic() + deadline
        spare: list[http.client.HTTPConnection] = []
        while len(self.conns) < WORKERS:
            if time.monotonic() > end:
                pytest.fail(f"reached workers {sorted(self.conns)} only")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            pid = self.pid_of(conn)
            if pid in self.conns:
                spare.append(conn)  # kept open, so the next accept may go elsewhere
            else:
                self.conns[pid] = conn
        for conn in spare:
            conn.close()

    def pid_of(self, conn: http.client.HTTPConnection) -> int:
        n = next(self.counter)
        conn.request("GET", f"/healthz?n={n}")
        conn.getresponse().read()
        end = time.monotonic() + 10
        while (pid := served_by("uvicorn", self.log).get(n)) is None:
            assert time.monotonic() < end, "request missing from the access log"
            time.sleep(0.01)  # polling the access log file
        return pid

    def call(
        self,
        pid: int,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        conn = self.conns[pid]
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()

    def status(self, pid: int, session_id: str) -> int:
        return self.call(pid, "GET", "/whoami", headers={HEADER: session_id})[0]

    def everywhere(self, session_id: str) -> set[int]:
        return {self.status(pid, session_id) for pid in self.conns}

    def logout(self, pid: int, token: str) -> tuple[int, bytes]:
        body = urlencode({"logout_token": token}).encode()
        return self.call(pid, "POST", LOGOUT_PATH, body=body, headers={"content-type": FORM})

    def push(self, pid: int, token: str) -> tuple[int, bytes]:
        headers = {"content-type": "application/secevent+jwt"}
        return self.call(pid, "POST", SSF_PATH, body=token.encode(), headers=headers)

    def stream_length(self) -> int:
        return int(self.redis.xlen(self.stream))

    def refused_everywhere_within(self, session_ids: list[str], bound: float) -> float:
        """Poll every worker until each refuses every session; the seconds it took."""
        start = time.perf_counter()
        pending = {(pid, sid) for pid in self.conns for sid in session_ids}
        while pending:
            pending = {(pid, sid) for pid, sid in pending if self.status(pid, sid) != 401}
            if time.perf_counter() - start > bound:
                pytest.fail(f"{len(pending)} (worker, session) pairs still pass after {bound}s")
        return time.perf_counter() - start


def _env(op: Provider, store_url: str, stream: str) -> dict[str, str]:
    """The servers' settings: the store, a Redis bus on ``stream``, both routes on."""
    return clean_env({
        "SESSIONMW_BACKEND": store_url,
        "SESSIONMW_BUS": REDIS_URL,
        "SESSIONMW_STREAM": stream,
        "SESSIONMW_OIDC_ISSUER": op.issuer,
        "SESSIONMW_OIDC_AUDIENCE": AUDIENCE,
        "SESSIONMW_SSF_ISSUER": op.issuer,
        "SESSIONMW_SSF_AUDIENCE": AUDIENCE,
    })  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_service("redis", REDIS_URL, 6379)
    import redis

    folder = tmp_path_factory.mktemp("idp-servers")
    store_url = f"sqlite:///{folder / 'sessions.db'}"
    Sessions(backend=store_url).create_schema()
    stream = f"sessionmw:test:idp:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    with Provider() as op:
        env = _env(op, store_url, stream)
        port = free_port()
        log, output = folder / "access.log", folder / "output.log"
        argv = access_logged("uvicorn", "examples.starlette_app:app", port, log,
                             "--workers", str(WORKERS), "--timeout-keep-alive", "60")  # fmt: skip
        try:
            with running(argv, env, port=port, output=output):
                found = Cluster(port, log, output, store_url, stream, client, op)
                found.connect_every_worker()
                yield found
                for conn in found.conns.values():
                    conn.close()
        finally:
            client.delete(stream)
            client.close()


def _sessions(cluster: Cluster) -> Sessions:
    # The test's own writer: same store, no bus (the workers read the store on a miss).
    return Sessions(Settings(backend=cluster.store_url))


def _cached_everywhere(cluster: Cluster, *session_ids: str) -> None:
    for session_id in session_ids:
        assert cluster.everywhere(session_id) == {200}


def test_logout_by_sid_reaches_every_worker(cluster: Cluster) -> None:
    """sid: exactly those sessions refused by both workers; the same token replayed to
    the other worker is a 200 duplicate that adds nothing to the stream."""
    sessions = _sessions(cluster)
    tag = uuid.uuid4().hex[:8]
    hit = [sessions.create(f"u-{tag}", idp_sid=f"sid-{tag}").session_id for _ in range(2)]
    kept = sessions.create(f"u-{tag}", idp_sid=f"other-{tag}").session_id
    stranger = sessions.create(f"v-{tag}").session_id
    _cached_everywhere(cluster, *hit, kept, stranger)

    first, second = sorted(cluster.conns)
    token = cluster.op.logout_token(sid=f"sid-{tag}")
    before = cluster.stream_length()
    assert cluster.logout(first, token) == (200, b"")
    cluster.refused_everywhere_within(hit, PROPAGATION_BOUND)
    published = cluster.stream_length() - before
    assert published == len(hit)
    assert cluster.everywhere(kept) == {200}
    assert cluster.everywhere(stranger) == {200}

    assert cluster.logout(second, token) == (200, b"")  # replay on the other worker
    assert cluster.logout(first, token) == (200, b"")
    assert cluster.stream_length() - before == published
    bad = cluster.logout(second, cluster.op.logout_token(sid=f"other-{tag}", nonce="x"))
    assert bad == (400, b'{"error": "invalid_request"}')
    assert cluster.everywhere(kept) == {200}


def test_logout_by_sub_reaches_every_worker(cluster: Cluster) -> None:
    """sub: every session of the user refused by both workers; another user's passes."""
    sessions = _sessions(cluster)
    tag = uuid.uuid4().hex[:8]
    mine = [sessions.create(f"w-{tag}", idp_sid=f"s{i}-{tag}").session_id for i in range(3)]
    stranger = sessions.create(f"x-{tag}").session_id
    _cached_everywhere(cluster, *mine, stranger)
    pid = max(cluster.conns)
    assert cluster.logout(pid, cluster.op.logout_token(sub=f"w-{tag}"))[0] == 200
    cluster.refused_everywhere_within(mine, PROPAGATION_BOUND)
    assert cluster.everywhere(stranger) == {200}


def test_caep_session_revoked_and_replay(cluster: Cluster) -> None:
    """CAEP session-revoked by session subject, then credential-change by user: refused
    on every worker; a replayed SET on the other worker is 202 and publishes nothing."""
    sessions = _sessions(cluster)
    tag = uuid.uuid4().hex[:8]
    hit = sessions.create(f"y-{tag}", idp_sid=f"caep-{tag}").session_id
    rest = [sessions.create(f"y-{tag}").session_id for _ in range(2)]
    _cached_everywhere(cluster, hit, *rest)
    first, second = sorted(cluster.conns)

    op = cluster.op
    token = op.set_token(sub_id=op.session_subject(f"caep-{tag}"))
    before = cluster.stream_length()
    assert cluster.push(first, token) == (202, b"")
    cluster.refused_everywhere_within([hit], PROPAGATION_BOUND)
    assert all(cluster.everywhere(s) == {200} for s in rest)
    published = cluster.stream_length() - before
    assert cluster.push(second, token) == (202, b"")
    assert cluster.stream_length() - before == published

    from tests.oidc_provider import CREDENTIAL_CHANGE

    change = op.set_token(CREDENTIAL_CHANGE, op.user_subject(f"y-{tag}"))
    assert cluster.push(second, change) == (202, b"")
    cluster.refused_everywhere_within(rest, PROPAGATION_BOUND)
    status, body = cluster.push(first, op.set_token(sub_id=op.user_subject("z"), iss="x"))
    assert status == 400
    assert b'"err": "invalid_issuer"' in body


def test_logout_propagation_latency(cluster: Cluster, record_property: Any) -> None:
    """60 logout tokens, each for a session cached by both workers, posted to the
    workers in turn: the time until both refuse it. Reports p50 and p99 (the JWKS
    fetch at each worker's first token is left out by a warm-up token)."""
    sessions = _sessions(cluster)
    tag = uuid.uuid4().hex[:8]
    targets = [
        (f"lat-{tag}-{i}", sessions.create(f"lat-{tag}", idp_sid=f"lat-{tag}-{i}").session_id)
        for i in range(60)
    ]
    _cached_everywhere(cluster, *(sid for _, sid in targets))
    pids = sorted(cluster.conns)
    # Each worker fetches the provider's keys at its first token: that one-off fetch
    # is not propagation, so one warm-up token per worker goes first.
    for pid in pids:
        assert cluster.logout(pid, cluster.op.logout_token(sid=f"warm-{tag}-{pid}"))[0] == 200
    took: list[float] = []
    for i, (idp_sid, session_id) in enumerate(targets):
        token = cluster.op.logout_token(sid=idp_sid)
        start = time.perf_counter()
        assert cluster.logout(pids[i % len(pids)], token)[0] == 200
        cluster.refused_everywhere_within([session_id], PROPAGATION_BOUND)
        took.append(time.perf_counter() - start)
    ordered = sorted(took)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    record_property("idp_logout_p50_ms", round(p50, 2))
    record_property("idp_logout_p99_ms", round(p99, 2))
    print(f"\nlogout token -> refused on {len(pids)} workers: p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, max {ordered[-1] * 1000:.1f} ms over {len(took)} tokens")  # fmt: skip
    assert "Traceback" not in cluster.output.read_text(errors="replace")


# -- gunicorn, Flask (WSGI workers: no pinned connections, so bursts) --------------------


def test_gunicorn_flask_workers(tmp_path: Path) -> None:
    """``gunicorn -w 2`` running the Flask example: a logout token by sid and a CAEP SET
    by user, each posted once, are refused by every worker (seen in the access log)
    while another user's session passes; their replays publish nothing."""
    require_service("redis", REDIS_URL, 6379)
    import redis

    store_url = f"sqlite:///{tmp_path / 'sessions.db'}"
    sessions = Sessions(backend=store_url)
    sessions.create_schema()
    by_sid = sessions.create("g-1", idp_sid="g-sid").session_id
    by_user = sessions.create("g-2").session_id
    stranger = sessions.create("g-3").session_id
    stream = f"sessionmw:test:idp:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    counter = itertools.count(1)
    log = tmp_path / "access.log"

    def burst(session_id: str, count: int = 12) -> dict[int, set[int]]:
        """Concurrent requests on fresh connections; PID -> statuses it answered."""
        numbers: dict[int, int] = {}

        def one(_: int) -> None:
            n = next(counter)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/whoami?n={n}", headers={HEADER: session_id,
                                                            "connection": "close"})  # fmt: skip
            numbers[n] = conn.getresponse().status
            conn.close()

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(one, range(count)))
        end = time.monotonic() + 10
        while not numbers.keys() <= (served := served_by("gunicorn", log)).keys():
            assert time.monotonic() < end, "requests missing from the access log"
            time.sleep(0.01)  # polling the access log file
        found: dict[int, set[int]] = {}
        for n, status in numbers.items():
            found.setdefault(served[n], set()).add(status)
        return found

    def until_every_worker(session_id: str, status: int) -> None:
        """Bursts until every worker has answered a whole burst with ``status``."""
        end = time.monotonic() + 15
        done: set[int] = set()
        while len(done) < WORKERS:
            assert time.monotonic() < end, f"only workers {done} answered {status}"
            done |= {pid for pid, got in burst(session_id).items() if got == {status}}

    with Provider() as op:
        env = _env(op, store_url, stream)
        port = free_port()
        argv = access_logged("gunicorn", "examples.flask_app:app", port, log,
                             "-w", str(WORKERS), "--graceful-timeout", "5")  # fmt: skip
        try:
            with running(argv, env, port=port, output=tmp_path / "output.log") as base:
                for session_id in (by_sid, by_user, stranger):
                    until_every_worker(session_id, 200)  # cached by every worker
                logout = urlencode({"logout_token": op.logout_token(sid="g-sid")}).encode()
                caep = op.set_token(sub_id=op.user_subject("g-2")).encode()
                set_type = {"content-type": "application/secevent+jwt"}
                for attempt in ("first", "replay"):
                    before = client.xlen(stream)
                    answer = httpx.post(base + LOGOUT_PATH, content=logout,
                                        headers={"content-type": FORM})  # fmt: skip
                    assert answer.status_code == 200
                    pushed = httpx.post(base + SSF_PATH, content=caep, headers=set_type)
                    assert pushed.status_code == 202
                    added = client.xlen(stream) - before
                    assert added > 0 if attempt == "first" else added == 0
                until_every_worker(by_sid, 401)
                until_every_worker(by_user, 401)
                until_every_worker(stranger, 200)
        finally:
            client.delete(stream)
            client.close()
