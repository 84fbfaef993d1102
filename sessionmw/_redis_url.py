"""Every Redis URL form of SPEC section 12, turned into redis-py's own clients.

=============================================================  ==========================
URL                                                            client
=============================================================  ==========================
``redis://host:port/db``, ``unix:///path?db=N``                ``redis.Redis``
``rediss://host:port/db?ssl_ca_certs=…&ssl_cert_reqs=required``  ``redis.Redis`` over TLS
``redis+sentinel://h1:p1,h2:p2/SERVICE[/db]``                  ``Sentinel.master_for``
``redis+cluster://h1:p1,h2:p2``                                ``RedisCluster``
=============================================================  ==========================

Each form has a sync and an asyncio client (``redis.asyncio``), built from the same
parsed URL. Nothing here knows about topology: Sentinel finds the master
(``SentinelConnectionPool`` asks the sentinels again whenever a connection to the old
master fails), and ``RedisCluster`` maps slots to nodes and follows ``MOVED``.

TLS is verified or refused: ``ssl_cert_reqs`` may only be ``required`` (the default),
so a wrong CA fails the handshake and nothing falls back to an unverified or
plaintext connection. Query options go through redis-py's own URL parser; for
Sentinel and Cluster ``ssl=true`` (with the same ``ssl_*`` options) turns TLS on,
and ``sentinel_username`` / ``sentinel_password`` authenticate to the sentinels (the
URL's user and password are the data nodes').
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from sessionmw.errors import ConfigError

#: What a Redis call can raise when the server (or cluster) cannot serve it. redis-py's
#: cluster client raises ``RedisClusterException`` (no reachable node, a node that is
#: not in cluster mode), which is not a ``RedisError``.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

__all__ = [
    "REDIS_ERRORS",
    "AsyncClient",
    "AsyncRedisCluster",
    "RedisCluster",
    "RedisTarget",
    "SyncClient",
    "async_client",
    "is_cluster_client",
    "parse",
    "same_slot_prefix",
    "subscriber_client",
    "sync_client",
]

SyncClient = redis.Redis | RedisCluster
AsyncClient = aredis.Redis | AsyncRedisCluster
Kind = Literal["server", "sentinel", "cluster"]

_SENTINEL = "redis+sentinel"
_CLUSTER = "redis+cluster"
_DEFAULT_PORT = {_SENTINEL: 26379, _CLUSTER: 6379}
_SENTINEL_AUTH = {"sentinel_username": "username", "sentinel_password": "password"}
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: which engine, which nodes, and the connection options."""

    url: str
    kind: Kind
    #: Sentinels (``sentinel``) or seed nodes (``cluster``); empty for one server.
    nodes: tuple[tuple[str, int], ...] = ()
    #: The Sentinel service name (the master's name in the sentinels' config).
    service: str | None = None
    #: Keyword arguments for the data connections (host/port excluded for the
    #: Sentinel and Cluster forms: those come from the engine).
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Keyword arguments for the connections to the sentinels.
    sentinel_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_cluster(self) -> bool:
        return self.kind == "cluster"


def _hosts(key: str, netloc: str, default_port: int) -> tuple[str, tuple[tuple[str, int], ...]]:
    """``user:pw@h1:p1,[::1]:p2`` -> (``user:pw@`` or ``""``, ((h1, p1), ("::1", p2)))."""
    userinfo, at, hosts = netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(key, "a Sentinel or Cluster URL needs host:port[,host:port…]")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigError(key, f"not a valid port in the Redis URL: {port_text!r}") from None
        if not host or not 0 < port < 65536:
            raise ConfigError(key, "a Sentinel or Cluster URL needs host:port[,host:port…]")
        nodes.append((unquote(host), port))
    return (userinfo + at), tuple(nodes)


def _check_tls(key: str, options: dict[str, Any]) -> None:
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and str(reqs).strip().lower() != "required":
        raise ConfigError(
            key,
            "ssl_cert_reqs must be 'required': sessionmw never talks to Redis over TLS "
            "without verifying its certificate (give ssl_ca_certs for a private CA)",
        )
    check_hostname = options.get("ssl_check_hostname")
    if check_hostname is not None and str(check_hostname).strip().lower() not in ("true", "1"):
        raise ConfigError(
            key,
            "ssl_check_hostname must stay on: a certificate is only verified together with "
            "the host name it was issued for (connect by that name, or add it to the "
            "certificate's subjectAltName)",
        )


def parse(url: str, key: str = "backend") -> RedisTarget:
    """Parse any Redis URL of SPEC section 12; :class:`ConfigError` naming ``key``.

    >>> parse("redis+sentinel://10.0.0.1:26379,10.0.0.2/mymaster/2").nodes
    (('10.0.0.1', 26379), ('10.0.0.2', 26379))
    >>> parse("redis+cluster://a:7000,b:7001").kind
    'cluster'
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(key, "expected a Redis URL")
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        db_path = parts.path.strip("/")
        if scheme != "unix" and db_path and not db_path.isdigit():
            raise ConfigError(key, f"the database must be a number, got {db_path!r}")
        try:
            options = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(key, f"not a valid Redis URL: {exc}") from None
        _check_tls(key, options)
        return RedisTarget(url, "server", options=options)
    if scheme not in (_SENTINEL, _CLUSTER):
        raise ConfigError(key, f"not a Redis URL scheme: {scheme!r}")
    userinfo, nodes = _hosts(key, parts.netloc, _DEFAULT_PORT[scheme])
    segments = [unquote(s) for s in parts.path.split("/") if s]
    service: str | None = None
    db = "0"
    if scheme == _SENTINEL:
        if not segments or len(segments) > 2:
            raise ConfigError(key, "a Sentinel URL is redis+sentinel://host:port/SERVICE[/db]")
        service = segments[0]
        if len(segments) == 2:
            db = segments[1]
            if not db.isdigit():
                raise ConfigError(key, f"the database must be a number, got {db!r}")
    elif segments:
        raise ConfigError(key, "a Cluster URL names no database (a cluster has only db 0)")
    query = f"?{parts.query}" if parts.query else ""
    try:
        # redis-py's own parser turns the user, password, db and query into kwargs.
        options = redis.connection.parse_url(  # type: ignore[no-untyped-call]
            f"redis://{userinfo}localhost/{db}{query}"
        )
    except ValueError as exc:
        raise ConfigError(key, f"not a valid Redis URL: {exc}") from None
    options.pop("host", None)
    if not isinstance(options.get("db", 0), int):
        raise ConfigError(key, "the database must be a number")
    if scheme == _CLUSTER and options.pop("db", 0) != 0:
        raise ConfigError(key, "a Cluster URL names no database (a cluster has only db 0)")
    ssl = options.pop("ssl", None)
    if ssl is not None:
        options["ssl"] = str(ssl).strip().lower() in _TRUE
    _check_tls(key, options)
    sentinel_options = {
        name: options.pop(option) for option, name in _SENTINEL_AUTH.items() if option in options
    }
    return RedisTarget(
        url,
        "sentinel" if scheme == _SENTINEL else "cluster",
        nodes=nodes,
        service=service,
        options=options,
        sentinel_options=sentinel_options,
    )


def _sentinel_options(extra: dict[str, Any]) -> dict[str, Any]:
    """The timeouts and the ``retry`` of the data connections, for the sentinels' too
    (redis-py's default retries a dead sentinel three times with seconds of backoff,
    far past the caller's timeout)."""
    return {k: v for k, v in extra.items() if k.startswith("socket_") or k == "retry"}


class _SentinelClient(redis.Redis):
    """The master's client of a ``redis+sentinel://`` URL: it owns its Sentinel pool,
    and closing it also closes the connections to the sentinels themselves (redis-py
    leaves both open when a client is given a pool)."""

    def close(self) -> None:
        super().close()
        for sentinel in getattr(self.connection_pool, "sentinel_manager").sentinels:  # noqa: B009
            sentinel.close()


class _AsyncSentinelClient(aredis.Redis):
    """The asyncio twin of :class:`_SentinelClient`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in getattr(self.connection_pool, "sentinel_manager").sentinels:  # noqa: B009
            await sentinel.aclose()


def sync_client(target: RedisTarget, **extra: Any) -> SyncClient:
    """A sync client for ``target``; ``extra`` (timeouts, ``retry``, ``client_name``,
    ``single_connection_client``) overrides what the URL says."""
    if target.kind == "server":
        return redis.Redis.from_url(target.url, **extra)
    options = {**target.options, **extra}
    if target.kind == "sentinel":
        assert target.service is not None
        single = options.pop("single_connection_client", False)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs={**_sentinel_options(options), **target.sentinel_options},
        )
        pool = SentinelConnectionPool(target.service, sentinel, **options)  # type: ignore[no-untyped-call]
        client = _SentinelClient(connection_pool=pool, single_connection_client=single)
        client.auto_close_connection_pool = True  # the pool is this client's own
        return client
    options.pop("single_connection_client", None)
    retry = options.pop("retry", None)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],  # type: ignore[no-untyped-call]
        retry=retry if retry is not None else Retry(NoBackoff(), 1),
        **options,
    )


def async_client(target: RedisTarget, **extra: Any) -> AsyncClient:
    """The asyncio twin of :func:`sync_client` (``extra["retry"]`` is an asyncio
    ``Retry`` here)."""
    if target.kind == "server":
        return aredis.Redis.from_url(target.url, **extra)
    options = {**target.options, **extra}
    if target.kind == "sentinel":
        assert target.service is not None
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs={**_sentinel_options(options), **target.sentinel_options},
        )
        pool = AsyncSentinelConnectionPool(target.service, sentinel, **options)  # type: ignore[no-untyped-call]
        async_client_ = _AsyncSentinelClient(connection_pool=pool)
        async_client_.auto_close_connection_pool = True
        return async_client_
    retry = options.pop("retry", None)
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in target.nodes],
        retry=retry if retry is not None else AsyncRetry(NoBackoff(), 1),
        **options,
    )


def subscriber_client(target: RedisTarget, stream: str, **extra: Any) -> redis.Redis:
    """One dedicated connection to the master holding ``stream`` (the bus subscriber
    blocks on it with ``XREAD``). On Sentinel the pool asks the sentinels for the
    master; on a cluster ``RedisCluster`` names the node that owns the stream's slot,
    and the connection goes straight there (a later ``MOVED`` or a dead node makes
    the subscriber reconnect, asking the cluster again)."""
    extra = {**extra, "single_connection_client": True}
    if target.kind != "cluster":
        client = sync_client(target, **extra)
        assert isinstance(client, redis.Redis)
        return client
    seeds = {k: v for k, v in extra.items() if k.startswith("socket_connect")}
    cluster = sync_client(target, **seeds, socket_timeout=extra.get("socket_connect_timeout"))
    assert isinstance(cluster, RedisCluster)
    try:
        node = cluster.get_node_from_key(stream)  # type: ignore[no-untyped-call]
        host, port = node.host, node.port
    finally:
        cluster.close()
    return redis.Redis(host=host, port=port, **{**target.options, **extra})


def is_cluster_client(client: object) -> bool:
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def same_slot_prefix(stream: str, suffix: str) -> str:
    """A key prefix whose keys hash to the slot of ``stream`` (SPEC section 12: replay
    keys share the stream's slot): ``{stream}`` as the hash tag, or the stream key as
    it is when it already carries a tag of its own.

    >>> same_slot_prefix("sessionmw:invalidations", ":webhook:")
    '{sessionmw:invalidations}:webhook:'
    >>> same_slot_prefix("{app}:events", ":webhook:")
    '{app}:events:webhook:'
    """
    slot = key_slot(stream.encode())
    for prefix in (f"{{{stream}}}{suffix}", f"{stream}{suffix}"):
        if key_slot((prefix + "x").encode()) == slot:
            return prefix
    raise ConfigError("stream", "no key can share this stream key's cluster slot")


def text(value: Any) -> str:
    """A reply item as text (``bytes`` decoded, undecodable bytes replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
