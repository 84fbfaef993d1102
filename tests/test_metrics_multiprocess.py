"""Metrics across worker processes (SPEC section 12): the mirror that copies the gates'
numbers into prometheus_client's multiprocess files, and a real gunicorn server whose
every worker answers one scrape for the whole server."""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import sessionmw
from sessionmw import ConfigError, SessionRecord, SessionStatus, Settings
from sessionmw import metrics as metrics_module
from sessionmw.backends import MemoryBackend
from sessionmw.events import Flush, SessionRevoked, UserSessionsRevoked
from sessionmw.gate import Gate
from sessionmw.metrics import _MIRRORS, _Mirror, multiprocess_mode, register_metrics
from sessionmw.signing import new_secret, signed_request
from tests.servers import (
    ROOT,
    clean_env,
    free_port,
    gunicorn,
    running,
    seed_store,
    served_by,
)
from tests.spec_cases import VALID
from tests.test_metrics import Samples, parse

ALICE = SessionRecord("sess-alice", "user-alice", SessionStatus.ACTIVE, None, None)

pytestmark = pytest.mark.usefixtures("fresh_gates")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def families(text: str) -> set[str]:
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if family.name.startswith("sessionmw_")
    }


def poll(condition: Callable[[], bool], seconds: float = 15.0, what: str = "") -> None:
    """Wait until ``condition()`` holds (polling a background sync or a server)."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"within {seconds}s: {what}")
        pause.wait(0.05)


@pytest.fixture
def mirrors() -> Iterator[list[_Mirror]]:
    """Mirrors built by a test are stopped and forgotten after it (the process-wide
    fork and exit hooks hold every live mirror)."""
    made: list[_Mirror] = []
    yield made
    for mirror in made:
        mirror.stop()
        _MIRRORS.discard(mirror)


def mirror_on(registry: CollectorRegistry, made: list[_Mirror], gates: Any) -> _Mirror:
    mirror = _Mirror(registry, interval=3600)  # passes only when the test asks
    mirror.add(gates)
    made.append(mirror)
    return mirror


def pushed(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- the mirror, in this process ---------------------------------------------------


def test_each_increment_is_pushed_once(mirrors: list[_Mirror]) -> None:
    """Passes push differences: a pass with nothing new changes nothing, and the
    metric objects end equal to the gate's own counters and histograms."""
    gate = Gate(Settings(backend=MemoryBackend([ALICE])))
    registry = CollectorRegistry()
    mirror = mirror_on(registry, mirrors, {"g": gate})

    assert gate.check("sess-alice") == ALICE
    gate.check("nobody")
    mirror.sync()
    mirror.sync()
    assert pushed(registry, "sessionmw_requests_allowed_total", gate="g") == 1
    assert pushed(registry, "sessionmw_requests_rejected_total", gate="g", reason="unknown") == 1
    assert pushed(registry, "sessionmw_cache_misses_total", gate="g") == 2

    for _ in range(5):
        gate.check("sess-alice")
    gate.apply_events([SessionRevoked("sess-gone")])
    gate.apply_events([Flush(), UserSessionsRevoked("user-x")], source="oidc")
    gate.apply_events([SessionRevoked("sess-other")], source="ssf")
    gate.bus_event(SessionRevoked("sess-bus"), time.time() - 0.2)
    mirror.sync()
    mirror.sync()
    assert pushed(registry, "sessionmw_requests_allowed_total", gate="g") == 6
    assert pushed(registry, "sessionmw_cache_hits_total", gate="g") == 5
    received = {
        source: pushed(
            registry, "sessionmw_invalidation_events_received_total", gate="g", source=source
        )
        for source in ("hook", "bus", "oidc", "ssf")
    }
    assert received == {"hook": 1, "bus": 1, "oidc": 2, "ssf": 1}
    assert (
        pushed(registry, "sessionmw_invalidation_events_total", gate="g", type="session_revoked")
        == 3
    )
    for name, histogram in (
        ("sessionmw_backend_lookup_seconds", gate.backend_latency),
        ("sessionmw_revocation_lag_seconds", gate.revocation_lag),
    ):
        snap = histogram.snapshot()
        assert pushed(registry, f"{name}_count", gate="g") == snap.count
        assert pushed(registry, f"{name}_sum", gate="g") == pytest.approx(snap.sum)
        for bound, count in zip(snap.bounds, snap.counts, strict=True):
            assert pushed(registry, f"{name}_bucket", gate="g", le=repr(bound)) == count
    assert pushed(registry, "sessionmw_revocation_lag_seconds_count", gate="g") == 1
    assert pushed(registry, "sessionmw_backend_lookup_seconds_count", gate="g") == 2


def test_concurrent_passes_never_double_count(mirrors: list[_Mirror]) -> None:
    """Passes racing each other (the thread, scrapes) while requests and events keep
    coming: the pushed totals end equal to the gate's, never above."""
    gate = Gate(Settings(backend=MemoryBackend([ALICE])))
    registry = CollectorRegistry()
    mirror = mirror_on(registry, mirrors, [gate])
    label = metrics_module.gate_name(gate)
    done = threading.Event()

    def requests() -> None:
        for i in range(3000):
            gate.check("sess-alice")
            if i % 100 == 0:
                gate.apply_events([SessionRevoked(f"gone-{i}")])

    def passes() -> None:
        while not done.is_set():
            mirror.sync()

    syncers = [threading.Thread(target=passes) for _ in range(3)]
    for thread in syncers:
        thread.start()
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(requests) for _ in range(4)]:
            future.result()
    done.set()
    for thread in syncers:
        thread.join()
    mirror.sync()
    assert pushed(registry, "sessionmw_requests_allowed_total", gate=label) == gate.allowed
    assert pushed(registry, "sessionmw_cache_hits_total", gate=label) == gate.cache.stats()["hits"]
    assert gate.events_received == {"hook": 120}
    assert (
        pushed(registry, "sessionmw_invalidation_events_received_total", gate=label, source="hook")
        == 120
    )


def test_stopping_a_gate_writes_the_last_numbers(mirrors: list[_Mirror]) -> None:
    """Gate.stop (an ASGI lifespan shutdown) makes every mirror pass at once: a worker
    ended right after it (uvicorn re-raises SIGTERM, so no atexit) loses nothing."""
    gate = Gate(Settings(backend=MemoryBackend([ALICE])))
    registry = CollectorRegistry()
    mirror_on(registry, mirrors, {"g": gate})
    gate.start()
    for _ in range(4):
        gate.check("sess-alice")
    assert pushed(registry, "sessionmw_requests_allowed_total", gate="g") == 0
    gate.stop()
    assert pushed(registry, "sessionmw_requests_allowed_total", gate="g") == 4


class CountingBus:
    """A bus reporting gaps and reconnects, whose counters can be reset (as a Redis
    bus's are in a forked child)."""

    connected = True

    def __init__(self) -> None:
        self.gaps = 0

    def stats(self) -> dict[str, Any]:
        return {"gaps": self.gaps, "reconnects": 0}


def test_a_counter_that_went_down_was_reset(mirrors: list[_Mirror]) -> None:
    """A source counter going down (reset) pushes its new value, not a negative one."""
    gate = Gate(Settings(backend=MemoryBackend()))
    bus = CountingBus()
    gate.bus = bus  # type: ignore[assignment]
    registry = CollectorRegistry()
    mirror = mirror_on(registry, mirrors, {"g": gate})
    bus.gaps = 2
    mirror.sync()
    bus.gaps = 1  # reset, then one gap: 1 more, not 0
    mirror.sync()
    assert pushed(registry, "sessionmw_bus_gaps_total", gate="g") == 3
    bus.gaps = 0
    mirror.sync()
    bus.gaps = 1
    mirror.sync()
    assert pushed(registry, "sessionmw_bus_gaps_total", gate="g") == 4


def test_gauges_come_from_started_gates(mirrors: list[_Mirror]) -> None:
    """A gate that never started (a pre-forking master's) sets no gauge; a started
    one does; a label whose gates are gone reads as empty and connected."""
    registry = CollectorRegistry()
    mirror = mirror_on(registry, mirrors, None)  # every live gate
    gate = Gate(Settings(backend=MemoryBackend([ALICE]), exempt_paths=["/only-in-mp-test"]))
    label = metrics_module.gate_name(gate)
    gate.check("sess-alice")
    mirror.sync()
    assert registry.get_sample_value("sessionmw_cache_entries", {"gate": label}) is None
    assert pushed(registry, "sessionmw_requests_allowed_total", gate=label) == 1
    gate.start()
    try:
        mirror.sync()
        assert registry.get_sample_value("sessionmw_cache_entries", {"gate": label}) == 1
        assert registry.get_sample_value("sessionmw_cache_max_entries", {"gate": label}) == 50000
        assert registry.get_sample_value("sessionmw_bus_connected", {"gate": label}) == 1
    finally:
        gate.stop()
    del gate
    gc.collect()
    mirror.sync()
    assert registry.get_sample_value("sessionmw_cache_entries", {"gate": label}) == 0
    assert pushed(registry, "sessionmw_requests_allowed_total", gate=label) == 1


# -- the mirror writing prometheus_client's files, in this process -----------------


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """prometheus_client in multiprocess mode for this test: metric objects made now
    write to files in a fresh directory (the mode is chosen at import, so the value
    class is switched by hand), and the process-wide mirror starts afresh."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    value_class = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]
    monkeypatch.setattr(prometheus_values, "ValueClass", value_class)
    monkeypatch.setattr(metrics_module, "_process_mirror", None)
    yield directory
    mirror = metrics_module._process_mirror
    if mirror is not None:
        mirror.stop()
        _MIRRORS.discard(mirror)
    value_class.close_all_files()


def read_directory(directory: Path) -> Samples:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    return parse(generate_latest(registry).decode())


def test_register_metrics_in_multiprocess_mode_syncs_at_scrape(multiproc_dir: Path) -> None:
    """register_metrics registers a collector that writes this process's latest
    numbers before the MultiProcessCollector after it reads the directory: a scrape
    right after the requests shows them, under the same families as one process."""
    assert multiprocess_mode()
    gate = Gate(Settings(backend=MemoryBackend([ALICE])))
    gate.start()
    try:
        registry = CollectorRegistry()
        register_metrics(registry, gates={"app": gate})
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for _ in range(7):
            gate.check("sess-alice")
        gate.apply_events([SessionRevoked("sess-gone")], source="ssf")
        text = generate_latest(registry).decode()
    finally:
        gate.stop()
    s = parse(text)
    assert value(s, "sessionmw_requests_allowed_total", gate="app") == 7
    assert value(s, "sessionmw_invalidation_events_received_total", gate="app", source="ssf") == 1
    assert value(s, "sessionmw_cache_entries", gate="app") == 1
    assert value(s, "sessionmw_backend_lookup_seconds_count", gate="app") == 1
    assert value(s, "sessionmw_info", version=sessionmw.__version__) == 1

    single = CollectorRegistry()
    single.register(metrics_module.SessionGateCollector({"app": gate}))
    assert families(text) == families(generate_latest(single).decode())


def test_a_missing_directory_is_a_config_error(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In multiprocess mode, a directory that does not exist is named at start-up."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir / "missing"))
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR") as info:
        register_metrics(CollectorRegistry())
    assert info.value.key == "PROMETHEUS_MULTIPROC_DIR"


def test_a_forked_child_pushes_only_its_own_counts(multiproc_dir: Path) -> None:
    """Counts made before a fork are the parent's: the child, whose metric objects
    start from zero in a file of its own, pushes only what it counts itself, and its
    background thread runs again. Summed over both files: every request once."""
    gate = Gate(Settings(backend=MemoryBackend([ALICE])))
    registry = CollectorRegistry()
    register_metrics(registry, gates={"app": gate})
    mirror = metrics_module._process_mirror
    assert mirror is not None
    for _ in range(5):  # not yet pushed when the fork happens
        gate.check("sess-alice")
    pid = os.fork()
    if pid == 0:  # the child: exit without running the parent's test machinery
        code = 1
        try:
            for _ in range(3):
                gate.check("sess-alice")
            thread = mirror._thread
            mirror.sync()
            code = 0 if thread is not None and thread.is_alive() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's mirror thread did not restart"
    gate.check("sess-alice")
    mirror.sync()
    files = sorted(p.name for p in multiproc_dir.glob("counter_*.db"))
    assert files == sorted([f"counter_{os.getpid()}.db", f"counter_{pid}.db"])
    s = read_directory(multiproc_dir)
    assert value(s, "sessionmw_requests_allowed_total", gate="app") == 9
    assert value(s, "sessionmw_cache_hits_total", gate="app") == 8
    assert value(s, "sessionmw_backend_lookup_seconds_count", gate="app") == 1


# -- a real gunicorn server ----------------------------------------------------------


def documented_config() -> str:
    """The gunicorn configuration file docs/metrics.md shows (directory, child_exit)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```python\n(# gunicorn_conf.py\n.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/metrics.md: one gunicorn_conf.py block"
    return str(blocks[0])


# Added to it for the test: uvicorn's access lines, prefixed with the worker's PID
# (tests.servers.served_by), in a file.
ACCESS_LOG_CONFIG = """
logconfig_dict = {{
    "root": {{"level": "INFO", "handlers": []}},
    "loggers": {{
        "gunicorn.error": {{"level": "INFO", "handlers": ["error"], "propagate": False}},
        "gunicorn.access": {{"level": "INFO", "handlers": ["access"], "propagate": False}},
    }},
    "handlers": {{
        "error": {{"class": "logging.StreamHandler", "formatter": "plain"}},
        "access": {{"class": "logging.FileHandler", "filename": {log!r}, "formatter": "pid"}},
    }},
    "formatters": {{
        "plain": {{"format": "%(process)d %(levelname)s %(message)s"}},
        "pid": {{"format": "%(process)d %(message)s"}},
    }},
}}
"""


class Server:
    """The example metrics app under gunicorn, and what its access log says."""

    def __init__(self, base: str, log: Path, secret: str) -> None:
        self.base = base
        self.log = log
        self.secret = secret
        self.n = 0
        self.lock = threading.Lock()

    def number(self) -> int:
        with self.lock:
            self.n += 1
            return self.n

    def get(self, path: str, **headers: str) -> tuple[int, httpx.Response]:
        n = self.number()
        response = httpx.get(
            f"{self.base}{path}?n={n}", headers={**headers, "connection": "close"}, timeout=10
        )
        return n, response

    def served(self, numbers: set[int]) -> dict[int, int]:
        """Request number -> worker PID, once the access log has them all."""
        poll(lambda: numbers <= served_by("uvicorn", self.log).keys(), 10, "access log lines")
        found = served_by("uvicorn", self.log)
        return {n: found[n] for n in numbers}

    def scrape(self) -> tuple[int, Samples, str]:
        """One scrape: (worker PID that answered, samples, text)."""
        n, response = self.get("/metrics")
        assert response.status_code == 200
        return self.served({n})[n], parse(response.text), response.text


def _bus_pids(client: Any, directory: Path) -> set[int]:
    """PIDs of this server's workers with a live bus subscriber (the bus names its
    connection; other tests' servers may share the Redis, so only processes started
    with this test's PROMETHEUS_MULTIPROC_DIR count)."""
    mine = f"PROMETHEUS_MULTIPROC_DIR={directory}".encode()
    pids = set()
    for entry in client.client_list():
        name = str(entry.get("name", ""))
        if name.startswith("sessionmw-bus-"):
            pid = int(name.rsplit("-", 1)[1])
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            if mine in environ:
                pids.add(pid)
    return pids


@pytest.mark.redis
def test_gunicorn_workers_answer_one_scrape_for_the_whole_server(
    tmp_path: Path, redis_url: str
) -> None:
    """gunicorn -w 3 with PROMETHEUS_MULTIPROC_DIR: after requests spread over the
    workers, any worker's scrape counts every one of them; events are counted by
    source (a hook call on one worker, read back from the stream by all three, and an
    entry added to the stream directly); a worker killed with SIGKILL keeps its counts
    in the sum, and its live gauges go (gunicorn's child_exit hook)."""
    import redis

    if not Path("/proc/self/environ").exists():
        pytest.skip("tells this server's workers apart through /proc (Linux)")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    seed_store(store)
    stream = f"sessionmw:test-metrics-mp:{uuid.uuid4().hex}"
    secret = new_secret()
    log = tmp_path / "access.log"
    log.touch()
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(documented_config() + ACCESS_LOG_CONFIG.format(log=str(log)))
    env = clean_env(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "SESSIONMW_BACKEND": store,
            "SESSIONMW_BUS": redis_url,
            "SESSIONMW_STREAM": stream,
            "SESSIONMW_INVALIDATION_SECRET": secret,
        }
    )
    port = free_port()
    argv = gunicorn(
        "examples.metrics_app:app",
        port,
        "-w",
        "3",
        "-c",
        str(config),
        "-k",
        "uvicorn.workers.UvicornWorker",
        "--graceful-timeout",
        "5",
    )
    client = redis.Redis.from_url(redis_url)
    try:
        with running(argv, env, port=port, output=tmp_path / "server.log") as base:
            server = Server(base, log, secret)
            poll(
                lambda: len(_bus_pids(client, directory)) == 3,
                20,
                "three workers with a subscriber",
            )
            workers = _bus_pids(client, directory)

            # Requests, concurrent so that several workers serve some.
            session = {"x-device-session-id": VALID}
            sent: set[int] = set()
            by_worker: dict[int, int] = {}
            deadline = time.monotonic() + 15
            while len(set(by_worker.values())) < 2:
                assert time.monotonic() < deadline, f"one worker served everything: {by_worker}"
                with ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(lambda _: server.get("/whoami", **session), range(24)))
                assert all(r.status_code == 200 for _, r in answers)
                sent |= {n for n, _ in answers}
                by_worker = server.served(sent)
            total = len(sent)
            serving = set(by_worker.values())
            assert serving <= workers

            # Events: one hook call (applied by the worker that takes it, then read
            # back from the stream by all three) and one entry added to the stream.
            headers, body = signed_request(
                secret, [{"type": "session_revoked", "session_id": "s-gone-hook"}]
            )
            hook = httpx.post(
                f"{base}/_internal/session-invalidation",
                content=body,
                headers={**headers, "connection": "close"},
                timeout=10,
            )
            assert hook.json() == {"applied": 1}
            client.xadd(stream, {"type": "session_revoked", "session_id": "s-gone-bus"})

            def settled() -> bool:
                _, s, _ = server.scrape()
                return (
                    value(s, "sessionmw_requests_allowed_total", gate="app") == total
                    and value(s, "sessionmw_revocation_lag_seconds_count", gate="app") == 6
                    and value(s, "sessionmw_cache_entries", gate="app") == len(serving)
                    and value(s, "sessionmw_cache_max_entries", gate="app") == 3 * 50000
                    and value(s, "sessionmw_bus_connected", gate="app") == 1
                )

            # Each worker copies its numbers to the files within a second.
            poll(settled, 15, f"a scrape counting {total} requests and 6 bus events")
            # Any worker's scrape answers for the whole server.
            answered: set[int] = set()
            for _ in range(30):
                pid, s, text = server.scrape()
                answered.add(pid)
                assert value(s, "sessionmw_requests_allowed_total", gate="app") == total
                # Each worker's first request of the session was a miss (or waited
                # for one): the backend was asked once per serving worker.
                assert value(s, "sessionmw_backend_lookup_seconds_count", gate="app") == len(
                    serving
                )
                received = {
                    source: value(
                        s,
                        "sessionmw_invalidation_events_received_total",
                        gate="app",
                        source=source,
                    )
                    for source in ("hook", "bus", "oidc", "ssf")
                }
                assert received == {"hook": 1, "bus": 6, "oidc": 0, "ssf": 0}
                assert (
                    value(
                        s, "sessionmw_invalidation_events_total", gate="app", type="session_revoked"
                    )
                    == 7
                )
                assert value(s, "sessionmw_cache_entries", gate="app") == len(serving)
                assert value(s, "sessionmw_cache_max_entries", gate="app") == 3 * 50000
                assert value(s, "sessionmw_bus_connected", gate="app") == 1
                if len(answered) >= 2:
                    break
            assert len(answered) >= 2, "every scrape landed on one worker"
            assert "s-valid" not in text
            assert "s-gone" not in text

            # A worker killed outright: its counts stay, its live gauges go.
            victim = next(iter(serving))
            os.kill(victim, signal.SIGKILL)
            poll(
                lambda: not list(directory.glob(f"gauge_live*_{victim}.db")),
                15,
                "child_exit removing the killed worker's live gauges",
            )
            poll(
                lambda: len(_bus_pids(client, directory) - {victim}) == 3,
                20,
                "gunicorn replacing the killed worker",
            )

            def after_kill() -> bool:
                _, s, _ = server.scrape()
                return value(s, "sessionmw_bus_connected", gate="app") == 1

            poll(after_kill, 15, "the replacement worker's bus connected")
            _, s, _ = server.scrape()
            assert value(s, "sessionmw_requests_allowed_total", gate="app") == total
            assert (
                value(s, "sessionmw_invalidation_events_received_total", gate="app", source="hook")
                == 1
            )
            # The replacement may re-read entries from just before it started.
            assert (
                6
                <= value(
                    s, "sessionmw_invalidation_events_received_total", gate="app", source="bus"
                )
                <= 8
            )
            assert value(s, "sessionmw_cache_entries", gate="app") == len(serving) - 1
            assert (directory / f"counter_{victim}.db").exists()
    finally:
        client.delete(stream)
        client.close()
