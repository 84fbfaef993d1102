"""The Redis Streams bus (``bus = "redis://host:port/db"``, SPEC sections 8 and 12).

Every Redis URL form works: one server (``redis://``, ``rediss://``, ``unix://``),
Sentinel (``redis+sentinel://``: the producers and the subscriber follow the current
master) and Cluster (``redis+cluster://``: the stream is one key, so it lives on one
master; the subscriber connects to whichever node serves its slot).

Producers (the hook in any worker, ``sessionmw revoke --bus``, ``redis-cli``) append
one stream entry per event::

    XADD sessionmw:invalidations MAXLEN ~ 100000 * type session_revoked session_id abc

Every process runs one subscriber: a daemon thread with its own connection that
``XREAD``s from the last entry ID it has seen and applies each entry to the
process's cache. The thread is created by :meth:`RedisBus.start`, which runs in the
worker after a pre-forking server forked; :meth:`RedisBus.after_fork` drops whatever
a child inherited (thread, locks, connections) and keeps only plain data.

Missed entries never pass unnoticed. On every (re)connect and every few seconds
the subscriber takes one atomic look at the stream (``XINFO STREAM``, its own last
entry, the next batch) and compares it with its position: entries after the cursor
that were trimmed (``entries-added`` minus the entries still present after the
cursor) or deleted (``max-deleted-entry-id``), a stream that disappeared or was
recreated (last ID behind the cursor, ``entries-added`` going backwards or behind
the cursor's position, more entries after the cursor than were ever added after
it), or a restarted Redis without the stream all flush the cache and log
``bus.gap_detected``. The bus reports to its sink (the gate): events, connects,
disconnects and gaps; the gate decides what they mean for its cache (a flush on a
gap, ``bus_outage_ttl`` while disconnected).

A failover (Sentinel promotion, a cluster replica taking over) looks like a
restart: the subscriber's connection drops, it reconnects to the new master (asking
the sentinels or the cluster again), and sees another ``run_id``. It resumes from its
cursor when its own last entry is still there; when that entry is gone (it had not
reached the replica before the old master died) or the stream's last ID is behind the
cursor, entries it saw may be gone with entries it did not, so it flushes and logs
``bus.gap_detected``. An entry that was added and lost in the failover without this
subscriber ever reading it leaves no trace to detect; the TTL and ``bus_outage_ttl``
are the net for it (see docs/deployment.md).

Replay dedupe of ``webhook-id`` values lives in Redis too (:class:`RedisReplayGuard`,
``SET NX EX``) so a retry that lands on another worker is recognised. On a cluster the
keys carry the stream key as a hash tag (``{stream}:webhook:…``), so they live in the
stream's slot, on the same master.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.retry import Retry

from sessionmw import _redis_url
from sessionmw._redis_url import REDIS_ERRORS
from sessionmw.backends._clients import Clients
from sessionmw.bus._subscriber import SubscriberBus, default_wait
from sessionmw.errors import BusUnavailable, ConfigError, InvalidPayload
from sessionmw.events import Event, UserSessionsRevoked, from_fields, to_fields
from sessionmw.replay import SharedReplayGuard

__all__ = [
    "MAXLEN",
    "REPLAY_WINDOW",
    "RedisBus",
    "RedisReplayGuard",
]

#: Approximate stream length kept by every XADD (``MAXLEN ~``).
MAXLEN = 100_000
#: Seconds a ``webhook-id`` is remembered: the 5-minute tolerance, both ways.
REPLAY_WINDOW = 600
#: Entries read per XREAD call.
BATCH = 500
#: On a process's first connect, entries from this long before :meth:`RedisBus.start`
#: are (re)applied, so an event added between start-up and the first XREAD is not
#: missed (applying an old revocation to a young cache is harmless).
START_REPLAY_MS = 2000

StreamID = tuple[int, int]
ZERO: StreamID = (0, 0)


def parse_id(value: bytes | str) -> StreamID:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamID) -> str:
    return f"{value[0]}-{value[1]}"


def _stream_fields(event: Event) -> dict[str, str]:
    fields = to_fields(event)
    if isinstance(event, UserSessionsRevoked) and event.before is None:
        # "default: the time the event is received": fix it now, so every process
        # (and a late reader) revokes the same sessions, not those issued later.
        fields["before"] = repr(time.time())
    return fields


def _sync_client(
    target: _redis_url.RedisTarget, timeout: float, **extra: Any
) -> _redis_url.SyncClient:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # One immediate retry: a pooled connection that died with a restarted Redis
        # (or was closed by a Sentinel failover) is replaced once; anything longer is
        # the caller's (or our own) backoff.
        "retry": Retry(NoBackoff(), 1),
    }
    options.update(extra)
    return _redis_url.sync_client(target, **options)


class RedisReplayGuard(SharedReplayGuard):
    """``webhook-id`` dedupe shared by every process: ``SET {prefix}{sha256(id)} 1 NX EX``.

    :meth:`claim` raises :class:`~sessionmw.errors.BusUnavailable` when Redis does not
    answer (the hook then answers 503 and the producer retries); :meth:`release`
    never raises.
    """

    def __init__(
        self,
        clients: Clients[_redis_url.SyncClient, Any],
        prefix: str,
        window: int = REPLAY_WINDOW,
    ) -> None:
        self._clients = clients
        self.prefix = prefix
        self.window = window

    def key(self, webhook_id: str) -> str:
        digest = hashlib.sha256(webhook_id.encode("utf-8", "surrogatepass")).hexdigest()
        return self.prefix + digest[:32]

    def claim(self, webhook_id: str) -> bool:
        try:
            return bool(
                self._clients.sync().set(self.key(webhook_id), b"1", nx=True, ex=self.window)
            )
        except REDIS_ERRORS as exc:
            raise BusUnavailable(f"replay guard unavailable: {type(exc).__name__}") from None

    def _forget(self, webhook_id: str) -> None:
        self._clients.sync().delete(self.key(webhook_id))


def _entries(reply: Any) -> list[tuple[Any, Mapping[Any, Any]]]:
    """The entries of a one-stream XREAD reply, whatever its shape (RESP2 list of
    ``[stream, entries]``, RESP3 mapping, with or without an extra list level)."""
    if not reply:
        return []
    values = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    out: list[tuple[Any, Mapping[Any, Any]]] = []
    for value in values:
        if value and isinstance(value[0], list):
            value = value[0]
        out.extend((entry[0], entry[1]) for entry in value if entry and entry[1] is not None)
    return out


class RedisBus(SubscriberBus[redis.Redis]):
    """A Redis Stream shared by every process (SPEC section 8, ``redis://``).

    ``stream``: the stream key. The subscriber reports to the sink given to
    :meth:`start`. The keyword-only tuning knobs exist
    for tests and unusual deployments: ``block_ms`` (XREAD BLOCK, also the longest
    :meth:`stop` waits for the thread), ``check_interval`` (seconds between gap
    checks while connected), ``backoff_base``/``backoff_cap`` (reconnect delays,
    exponential with jitter), ``timeout`` (producer socket timeouts), ``wait``
    (how the thread sleeps between attempts: ``wait(stop_event, seconds)``).
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        block_ms: int = 1000,
        check_interval: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        timeout: float = 2.0,
        wait: Callable[[threading.Event, float], bool] = default_wait,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._target = _redis_url.parse(url, "bus")
        if not isinstance(stream, str) or not stream:
            raise ConfigError("stream", "must be a non-empty string")
        self.url = url
        self.stream = stream
        self.block_ms = int(block_ms)
        self.check_interval = check_interval
        self.timeout = timeout
        # The producers' client. The async paths run the sync calls in a worker thread
        # (``asyncio.to_thread``): publishing happens once per hook call, not per
        # request, and a thread hop costs far less than a ``redis.asyncio`` client per
        # event loop that nobody closes.
        target = self._target
        self._clients: Clients[_redis_url.SyncClient, Any] = Clients(
            lambda: _sync_client(target, timeout)
        )
        # On a cluster the replay keys share the stream's slot (SPEC section 12).
        prefix = (
            _redis_url.same_slot_prefix(stream, ":webhook:")
            if target.is_cluster
            else f"{stream}:webhook:"
        )
        self._guard = RedisReplayGuard(self._clients, prefix)
        super().__init__(
            ("stream", stream),
            self._clients,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            wait=wait,
            rng=rng,
        )
        self._reset_position()

    def _reset_position(self) -> None:
        self._cursor: StreamID | None = None
        # True when the cursor names an ID this stream really had (not a synthetic one).
        self._cursor_real = False
        self._seq: int | None = None
        self._entries_added: int | None = None
        self._gap_ack: StreamID = ZERO
        self._run_id: str | None = None
        self._started_ms = 0

    # -- Bus protocol (start, stop, after_fork, apublish, stats: SubscriberBus) -----

    @property
    def replay_guard(self) -> RedisReplayGuard:
        return self._guard

    def publish(self, events: Sequence[Event]) -> None:
        """XADD one entry per event, all or none (one MULTI/EXEC round trip);
        raises BusUnavailable."""
        self.publish_ids(events)

    def publish_ids(self, events: Sequence[Event]) -> list[str]:
        """Like :meth:`publish`, returning the entry IDs the stream gave the events."""
        if not events:
            return []
        try:
            fields = [_stream_fields(event) for event in events]
            pipe = self._clients.sync().pipeline(transaction=True)
            for entry in fields:
                pipe.xadd(self.stream, entry, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
            ids = pipe.execute()
        except REDIS_ERRORS as exc:
            raise BusUnavailable(f"Redis bus unavailable: {type(exc).__name__}") from None
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    # -- the subscriber (the thread itself: SubscriberBus) ------------------------

    _connection_errors = (*REDIS_ERRORS, OSError)

    def _mark_start(self) -> None:
        if self._cursor is None and not self._started_ms:
            self._started_ms = int(time.time() * 1000)

    @property
    def _block_seconds(self) -> float:
        return self.block_ms / 1000

    def _position(self) -> str | None:
        cursor = self._cursor
        return format_id(cursor) if cursor is not None else None

    def _interrupt(self, client: redis.Redis) -> None:
        """Wake a blocked XREAD (stop): shut the subscriber's socket down."""
        connection = getattr(client, "connection", None)
        sock = getattr(connection, "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _open(self) -> redis.Redis:
        # One connection to the master holding the stream (on Sentinel and Cluster,
        # wherever that is now).
        return _redis_url.subscriber_client(
            self._target,
            self.stream,
            socket_timeout=self.block_ms / 1000 + self.timeout,
            socket_connect_timeout=self.timeout,
            # Visible in CLIENT LIST: which processes have a live subscriber.
            client_name=f"sessionmw-bus-{os.getpid()}",
            retry=Retry(NoBackoff(), 0),
        )

    def _on_connect(self, client: redis.Redis) -> None:
        """Check for a gap, read up to the stream's end, then count as connected."""
        if self._target.kind != "server":
            # A demoted master (Sentinel) or a replica (Cluster) would still serve
            # reads, but from a copy that may fall behind: only the master will do.
            role = client.execute_command("ROLE")  # type: ignore[no-untyped-call]
            if not role or _redis_url.text(role[0]) != "master":
                raise RedisConnectionError("connected to a replica, not the master")
        try:
            run_id = str(client.info("server").get("run_id", ""))
        except ResponseError:  # INFO disabled (some managed services): no restart check
            run_id = ""
        restarted = bool(run_id) and self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if self._cursor is None:
            self._initial_cursor(client)
        while not self._sync(client, restarted=restarted):
            restarted = False
        self._now_connected(cursor=format_id(self._cursor or ZERO), restarted=restarted)

    def _follow(self, client: redis.Redis, stop: threading.Event) -> None:
        next_check = time.monotonic() + self.check_interval
        while not stop.is_set():
            if time.monotonic() >= next_check:
                self._sync(client, restarted=False)
                next_check = time.monotonic() + self.check_interval
            cursor = format_id(self._cursor or ZERO)
            reply = client.xread({self.stream: cursor}, count=BATCH, block=self.block_ms)
            entries = _entries(reply)
            if entries:
                self._handle(entries)

    def _handle(self, entries: Sequence[tuple[Any, Mapping[Any, Any]]]) -> None:
        applied: list[Event] = []
        worst = 0.0
        for raw_id, fields in entries:
            entry_id = parse_id(raw_id)
            self._cursor, self._cursor_real = entry_id, True
            if self._seq is not None:
                self._seq += 1
            try:
                event = from_fields(fields)
            except InvalidPayload as exc:
                self._bad_entry(format_id(entry_id), str(exc))
                continue
            sent_at = entry_id[0] / 1000
            if isinstance(event, UserSessionsRevoked) and event.before is None:
                event = dataclasses.replace(event, before=sent_at)
            lag = self._deliver(event, sent_at)
            if lag is None:
                continue
            worst = max(worst, lag)
            applied.append(event)
        self._applied_log(applied, lag_ms=worst)

    # -- gap detection -----------------------------------------------------------
    #
    # Position bookkeeping: ``_cursor`` is the last entry ID read; ``_seq`` (when
    # known) is how many entries the stream had ever been given up to and including
    # the cursor, in the stream's own ``entries-added`` count. Trimming removes
    # entries from the head only and does not move ``max-deleted-entry-id`` (XDEL
    # does), so a trim past the cursor shows as "every entry still present is after
    # the cursor, yet fewer are present than were added after it".

    def _info(self, client: redis.Redis) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = client.xinfo_stream(self.stream)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return None
        return info

    def _initial_cursor(self, client: redis.Redis) -> None:
        """First connect of this process: start near the end, a little before start()."""
        info = self._info(client)
        if info is None:
            self._cursor, self._cursor_real, self._seq = ZERO, True, 0
            return
        last = parse_id(info["last-generated-id"])
        since = (max(0, self._started_ms - START_REPLAY_MS), 0)
        cursor = min(last, since)
        self._cursor, self._cursor_real = cursor, cursor == last
        added = info.get("entries-added")
        self._seq = added if cursor == last else None
        self._entries_added = added

    def _sync(self, client: redis.Redis, *, restarted: bool) -> bool:
        """One atomic look at the stream (XINFO, our own entry, the next batch): check
        for a gap, then apply the batch. True when caught up with the stream's end."""
        cursor = self._cursor or ZERO
        text = format_id(cursor)
        pipe = client.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.xrange(self.stream, text, text, count=1)
        pipe.xread({self.stream: text}, count=BATCH)
        info, own, reply = pipe.execute(raise_on_error=False)
        if isinstance(info, ResponseError) and "no such key" in str(info).lower():
            info = None
        for result in (info, own, reply):
            if isinstance(result, Exception):
                raise result
        if self._gap_check(info, cursor, bool(own), restarted=restarted):
            return False  # the cursor went back to 0-0: read the new stream from its start
        entries = _entries(reply)
        if entries:
            self._handle(entries)
        if len(entries) >= BATCH:
            return False
        if info is not None:
            # Caught up as of this snapshot: the cursor is the stream's last ID.
            last = parse_id(info["last-generated-id"])
            if self._cursor is None or self._cursor < last:
                self._cursor, self._cursor_real = last, True
            self._seq = info.get("entries-added")
        return True

    def _gap_check(
        self, info: dict[str, Any] | None, cursor: StreamID, own: bool, *, restarted: bool
    ) -> bool:
        """Flush on a gap. True when the stream was recreated (cursor reset to 0-0)."""
        if info is None:
            if cursor > ZERO or restarted:
                self._gap("stream_missing" if cursor > ZERO else "redis_restarted")
            self._cursor, self._cursor_real, self._seq = ZERO, True, 0
            self._entries_added, self._gap_ack = 0, ZERO
            return False
        last = parse_id(info["last-generated-id"])
        added: int | None = info.get("entries-added")
        raw_deleted = info.get("max-deleted-entry-id")
        max_deleted = parse_id(raw_deleted) if raw_deleted is not None else None
        first_entry = info.get("first-entry")
        first = parse_id(first_entry[0]) if first_entry else None
        length = int(info.get("length", 0))
        previous, self._entries_added = self._entries_added, added
        seq = self._seq
        lost_own = self._cursor_real and cursor > ZERO and not own
        if (
            last < cursor
            or (added is not None and previous is not None and added < previous)
            or (added is not None and seq is not None and added < seq)
            or (restarted and lost_own)
            # More entries after the cursor than were ever added after it: another stream.
            or (
                lost_own
                and added is not None
                and seq is not None
                and (first is None or first > cursor)
                and added - seq < length
            )
        ):
            self._gap("stream_recreated")
            self._cursor, self._cursor_real, self._seq = ZERO, True, 0
            self._gap_ack = max_deleted or ZERO
            return True
        reason: str | None = None
        head_past = first is None or first > cursor  # every entry left is after the cursor
        if max_deleted is not None and max_deleted > cursor and max_deleted > self._gap_ack:
            reason = "deleted"
            self._gap_ack = max_deleted
        elif head_past:
            if added is not None and seq is not None:
                if added - seq > length:
                    reason = "trimmed"
            elif lost_own:  # Redis < 7, or position unknown: our entry is gone
                reason = "trimmed"
        if reason is not None:
            if head_past and added is not None:
                self._seq = added - length
            self._gap(reason)
        return False
