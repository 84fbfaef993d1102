"""Throwaway Redis engines for tests and benchmarks, from Debian's ``redis-server``:
one TLS server (certificates made here with ``openssl``), a Sentinel setup (one master,
one replica, three sentinels) and a Cluster (three masters, three replicas).

Every process runs on free loopback ports in a temporary directory of its own and is
stopped by its PID (never by name); the directory is removed afterwards. Waits are
polls with deadlines.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "Certificates",
    "ClusterEngine",
    "GuardedSentinelEngine",
    "RedisProcess",
    "SentinelEngine",
    "TLSEngine",
    "available",
    "cluster",
    "guarded_sentinel",
    "require",
    "sentinel",
    "tls",
    "wait_until",
]

SERVICE = "sessionmw-test"
_PAUSE = threading.Event()  # never set: a poll interval that is not a bare sleep


def available() -> bool:
    """True when the Redis and openssl binaries these engines need are on PATH."""
    return all(shutil.which(name) for name in ("redis-server", "redis-cli", "openssl"))


def wait_until(predicate: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until true; ``TimeoutError`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {deadline:g}s")
        _PAUSE.wait(0.05)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_taken: set[int] = set()


def free_ports(count: int, *, with_bus: bool = False) -> list[int]:
    """``count`` free loopback ports (and ``port + 10000`` free too for cluster nodes,
    whose cluster bus listens there), never handed out twice by this process."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20000, 29999)
        if port in _taken or not _port_free(port):
            continue
        if with_bus and not _port_free(port + 10000):
            continue
        _taken.add(port)
        found.append(port)
    return found


def _command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _ping(port: int, **options: Any) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2, **options)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class RedisProcess:
    """One ``redis-server`` process (a data node or a sentinel)."""

    port: int
    folder: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, **ping_options: Any) -> RedisProcess:
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", *self.args],
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the test run is not sent to it
        )
        log.close()
        if ping_options.get("skip_ping"):
            return self
        wait_until(lambda: self._up(**ping_options), 20, f"redis-server on port {self.port}")
        return self

    def _up(self, **ping_options: Any) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            said = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited:\n{said}")
        return _ping(self.port, **ping_options)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID: the crash a failover test needs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it has not exited within 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **options)


def _node_args(port: int, folder: Path, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
        # Replicas sync at once (the default waits 5 s to batch diskless syncs).
        "--repl-diskless-sync-delay", "0",
        *extra,
    ]  # fmt: skip


def _replica_synced(master: RedisProcess) -> bool:
    """True once ``master``'s writes so far reached a replica (``WAIT 1``, 500 ms)."""
    client = master.client()
    try:
        return int(_command(client, "WAIT", 1, 500)) >= 1
    except redis.RedisError:
        return False
    finally:
        client.close()


class _Engine:
    """Processes and a temporary folder, torn down together."""

    def __init__(self, name: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"sessionmw-{name}-"))
        self.processes: list[RedisProcess] = []

    def _process(self, name: str, port: int, *args: str) -> RedisProcess:
        folder = self.folder / name
        folder.mkdir()
        process = RedisProcess(port, folder, list(args) or _node_args(port, folder))
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- TLS -----------------------------------------------------------------------------


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Certificates:
    """PEM files made for one test run: a CA, a server and a client certificate signed
    by it, and another CA that signed nothing here (the wrong one)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path

    @classmethod
    def make(cls, folder: Path) -> Certificates:
        folder.mkdir(parents=True, exist_ok=True)
        for ca in ("ca", "wrong-ca"):
            _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                     "-subj", f"/CN=sessionmw test {ca}", "-keyout", f"{ca}.key",
                     "-out", f"{ca}.pem")  # fmt: skip
        (folder / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
        )
        for name in ("server", "client"):
            _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj",
                     f"/CN=sessionmw test {name}", "-keyout", f"{name}.key",
                     "-out", f"{name}.csr")  # fmt: skip
            _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
                     "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                     "-extfile", "san.ext", "-out", f"{name}.pem")  # fmt: skip
        return cls(
            ca=folder / "ca.pem",
            server_cert=folder / "server.pem",
            server_key=folder / "server.key",
            client_cert=folder / "client.pem",
            client_key=folder / "client.key",
            wrong_ca=folder / "wrong-ca.pem",
        )


class TLSEngine(_Engine):
    """``redis-server`` listening with TLS only (no plaintext port), client
    certificates required."""

    def __init__(self) -> None:
        super().__init__("tls")
        self.certs = Certificates.make(self.folder / "certs")
        (self.port,) = free_ports(1)
        folder = self.folder / "node"
        folder.mkdir()
        args = _node_args(0, folder, "--tls-port", str(self.port),
                          "--tls-cert-file", str(self.certs.server_cert),
                          "--tls-key-file", str(self.certs.server_key),
                          "--tls-ca-cert-file", str(self.certs.ca),
                          "--tls-auth-clients", "yes")  # fmt: skip
        self.node = RedisProcess(self.port, folder, args)
        self.processes.append(self.node)
        self.node.start(**self._tls_options())

    def _tls_options(self, ca: Path | None = None) -> dict[str, Any]:
        return {
            "ssl": True,
            "ssl_ca_certs": str(ca or self.certs.ca),
            "ssl_certfile": str(self.certs.client_cert),
            "ssl_keyfile": str(self.certs.client_key),
            "ssl_cert_reqs": "required",
        }

    def url(self, db: int = 0, *, ca: Path | None = None) -> str:
        options = self._tls_options(ca)
        query = "&".join(f"{k}={v}" for k, v in options.items() if k != "ssl")
        return f"rediss://127.0.0.1:{self.port}/{db}?{query}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **self._tls_options())


# -- Sentinel ------------------------------------------------------------------------


class SentinelEngine(_Engine):
    """One master, one replica, three sentinels watching service ``SERVICE``
    (quorum 2, a master is down after 1 s without answers)."""

    def __init__(self) -> None:
        super().__init__("sentinel")
        master_port, replica_port = free_ports(2)
        self.nodes = {
            master_port: self._process("node-a", master_port),
            replica_port: self._process(
                "node-b", replica_port,
                *_node_args(replica_port, self.folder / "node-b",
                            "--replicaof", "127.0.0.1", str(master_port)),
            ),
        }  # fmt: skip
        for node in self.nodes.values():
            node.start()
        self.sentinel_ports = free_ports(3)
        self.sentinels: list[RedisProcess] = []
        for n, port in enumerate(self.sentinel_ports):
            folder = self.folder / f"sentinel-{n}"
            folder.mkdir()
            config = folder / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            sentinel = RedisProcess(port, folder, [str(config), "--sentinel"])
            self.processes.append(sentinel)
            self.sentinels.append(sentinel.start())
        self.wait_replicated()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master_port(self) -> int | None:
        """The master's port as a majority of live sentinels report it."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            client = sentinel.client(socket_connect_timeout=1)
            try:
                address = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                port = int(address[1])
                votes[port] = votes.get(port, 0) + 1
            except (redis.RedisError, OSError, TypeError, IndexError):
                continue
            finally:
                client.close()
        best = max(votes.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= 2 else None

    def master(self) -> RedisProcess:
        port = self.master_port()
        assert port is not None, "the sentinels agree on no master"
        return self.nodes[port]

    def role(self, port: int) -> str:
        client = self.nodes[port].client(socket_connect_timeout=1)
        try:
            return str(_command(client, "ROLE")[0], "utf-8")
        except (redis.RedisError, OSError):
            return "down"
        finally:
            client.close()

    def wait_replicated(self, deadline: float = 20) -> None:
        """Until the replica is in sync with the master (``WAIT 1`` succeeds)."""
        master = self.master()
        wait_until(lambda: _replica_synced(master), deadline, "the replica to be in sync")

    def wait_master(self, not_port: int, deadline: float = 30) -> int:
        """Until the sentinels name a master other than ``not_port`` and it says it is
        one; its port."""

        def moved() -> bool:
            port = self.master_port()
            return port is not None and port != not_port and self.role(port) == "master"

        wait_until(moved, deadline, "the sentinels to promote the replica")
        port = self.master_port()
        assert port is not None
        return port

    def failover(self, deadline: float = 30) -> int:
        """``SENTINEL FAILOVER``; the new master's port, once it serves as one and
        the old master follows it."""
        old = self.master().port
        client = self.sentinels[0].client()
        try:
            _command(client, "SENTINEL", "FAILOVER", SERVICE)
        finally:
            client.close()
        new = self.wait_master(old, deadline)
        wait_until(lambda: self.role(old) == "slave", deadline, "the old master to follow")
        return new

    def kill_master(self, deadline: float = 30) -> int:
        """SIGKILL the master by PID; the new master's port once promoted."""
        old = self.master()
        old.kill()
        return self.wait_master(old.port, deadline)


# -- Cluster -------------------------------------------------------------------------


class ClusterEngine(_Engine):
    """Three masters, three replicas (``redis-cli --cluster create --cluster-replicas
    1``); a node is failed after 1 s without answers."""

    def __init__(self, node_timeout_ms: int = 1000) -> None:
        super().__init__("cluster")
        self.ports = free_ports(6, with_bus=True)
        for n, port in enumerate(self.ports):
            folder_name = f"node-{n}"
            self._process(
                folder_name,
                port,
                *_node_args(
                    port,
                    self.folder / folder_name,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--cluster-replica-validity-factor",
                    "0",
                ),
            )
        for process in self.processes:
            process.start()
        create = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            self.close()
            raise RuntimeError(create.stdout.decode(errors="replace")[-2000:])
        wait_until(self.healthy, 30, "the cluster to be ok on every node")
        self.wait_replicated()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def node(self, port: int) -> RedisProcess:
        return next(p for p in self.processes if p.port == port)

    def _info(self, process: RedisProcess) -> dict[str, str]:
        client = process.client(socket_connect_timeout=1)
        try:
            text = _command(client, "CLUSTER", "INFO")
        finally:
            client.close()
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok`` and every master slot is served."""
        for process in self.processes:
            if not process.alive:
                continue
            try:
                info = self._info(process)
            except (redis.RedisError, OSError):
                return False
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_fail") != "0":
                return False
        return True

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as a live node sees it."""
        slot = redis.crc.key_slot(key.encode())
        for process in self.processes:
            if not process.alive:
                continue
            client = process.client(socket_connect_timeout=1)
            try:
                for start, end, master, *_ in _command(client, "CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        raise RuntimeError("no live node answered CLUSTER SLOTS")

    def wait_replicated(self, deadline: float = 30) -> None:
        """Until every master's writes so far reached its replica (``WAIT 1``)."""
        for port in sorted(self.masters()):
            synced = functools.partial(_replica_synced, self.node(port))
            wait_until(synced, deadline, f"the replica of {port} to be in sync")

    def masters(self) -> set[int]:
        ports: set[int] = set()
        for process in self.processes:
            if process.alive:
                client = process.client(socket_connect_timeout=1)
                try:
                    for _, _, master, *_ in _command(client, "CLUSTER", "SLOTS"):
                        ports.add(int(master[1]))
                    return ports
                except (redis.RedisError, OSError):
                    continue
                finally:
                    client.close()
        return ports

    def kill_master_of(self, key: str) -> RedisProcess:
        """SIGKILL (by PID) the master serving ``key``; the killed process."""
        victim = self.node(self.master_of(key))
        victim.kill()
        return victim

    def wait_promoted(self, key: str, dead: int, deadline: float = 30) -> int:
        """Until another node serves ``key``'s slot and the cluster is ok again."""

        def promoted() -> bool:
            try:
                return self.master_of(key) != dead and self.healthy()
            except RuntimeError:
                return False

        wait_until(promoted, deadline, "a replica to take over the dead master's slots")
        return self.master_of(key)


# -- fixtures' context managers ------------------------------------------------------


class GuardedSentinelEngine(_Engine):
    """One master and one sentinel that answers only after ``AUTH`` with
    ``password`` (``requirepass`` in sentinel.conf): the smallest setup that shows
    whether a client authenticates to the sentinels."""

    def __init__(self, password: str) -> None:
        super().__init__("sentinel-auth")
        master_port, self.sentinel_port = free_ports(2)
        self.master = self._process("node", master_port).start()
        folder = self.folder / "sentinel"
        folder.mkdir()
        config = folder / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\ndir {folder}\n"
            f"requirepass {password}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
        )
        sentinel = RedisProcess(self.sentinel_port, folder, [str(config), "--sentinel"])
        self.processes.append(sentinel)
        sentinel.start(password=password)

    def url(self, query: str = "") -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0{query}"


def require(what: str) -> None:
    """Skip the calling test (fail it when CI=true) unless :func:`available`; ``what``
    names the setup it needs."""
    if available():
        return
    import pytest

    from tests.conftest import IN_CI

    message = f"redis-server, redis-cli and openssl are needed for {what}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def tls() -> contextlib.closing[TLSEngine]:
    """A TLS server, closed after the ``with`` block."""
    return contextlib.closing(TLSEngine())


def sentinel() -> contextlib.closing[SentinelEngine]:
    """A Sentinel setup, closed after the ``with`` block."""
    return contextlib.closing(SentinelEngine())


def guarded_sentinel(password: str) -> contextlib.closing[GuardedSentinelEngine]:
    """A one-sentinel setup whose sentinel requires ``password``, closed after the
    ``with`` block."""
    return contextlib.closing(GuardedSentinelEngine(password))


def cluster() -> contextlib.closing[ClusterEngine]:
    """A Cluster, closed after the ``with`` block."""
    return contextlib.closing(ClusterEngine())
