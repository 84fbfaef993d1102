"""The PostgreSQL bus (``bus = "postgresql://user@host/db"``, SPEC section 12).

For apps that have PostgreSQL and no Redis. Events are rows of one table::

    sessionmw_events (id BIGSERIAL PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL,
                      type TEXT NOT NULL, session_id TEXT NULL, user_id TEXT NULL,
                      before DOUBLE PRECISION NULL)

(``?table=NAME`` picks another name; the table is created when missing). A producer
inserts rows and ``NOTIFY``\\s the channel named like the table in the same
transaction, which works from ``psql`` too::

    INSERT INTO sessionmw_events (created_at, type, session_id)
        VALUES (extract(epoch from now()), 'session_revoked', 'abc');
    NOTIFY sessionmw_events;

Every process runs one subscriber: a daemon thread with its own connection that
``LISTEN``\\s on the channel and, on each notification and every few seconds as a
safety net, reads the rows after the highest ``id`` it has read, in ``id`` order.
A notification lost while disconnected changes nothing: after reconnecting (with
backoff) the subscriber reads from its position again.

**Holes.** Ids are handed out when a transaction inserts, and transactions commit
in any order, so the subscriber may read id 11 while id 10 is still being written
by a transaction that has not committed yet (or that will roll back). Each such
hole is remembered and read again until every transaction that was running when
the hole was noticed has ended (``pg_current_snapshot()``'s ``xmin`` passed the
``xmax`` noted then); whatever the hole still misses after that was rolled back,
or deleted (see below).

**Gaps.** Subscribers delete rows older than ``retention`` seconds (one ``DELETE``
every few seconds, by whichever subscriber gets an advisory lock first). A
subscriber that was away longer than that finds the oldest row's id above its
position + 1: it reports a gap, the gate flushes its cache and
``bus.gap_detected`` is logged. A missing id below every remaining row looks the
same whether its row was deleted or its insert rolled back, so a rolled-back
insert can cause a flush that was not needed: the check errs on the safe side.

**Replay guard.** ``webhook-id`` values (and logout-token ``jti``\\s) are claimed
in the table ``{table}_replay`` (16-byte digests, never the IDs themselves) with
``INSERT … ON CONFLICT``, so a retry landing on another worker or host is a
duplicate. Expired claims can be claimed again and are deleted with the old events.

**One transaction with the store.** :meth:`PostgresBus.write_events` inserts
events (and notifies) on a SQLAlchemy connection inside the caller's transaction;
:class:`~sessionmw.Sessions` uses it when its SQL store lives in the same database
(:meth:`PostgresBus.same_database`), so a revocation and its event commit together
or not at all.
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from sessionmw import _fork
from sessionmw.bus._subscriber import SubscriberBus, default_wait
from sessionmw.errors import BusUnavailable, ConfigError, InvalidPayload
from sessionmw.events import Event, UserSessionsRevoked, parse_event
from sessionmw.replay import SharedReplayGuard, digest

if TYPE_CHECKING:
    from sqlalchemy import Connection as SAConnection
    from sqlalchemy.engine import URL

__all__ = ["DEFAULT_TABLE", "PostgresBus", "PostgresReplayGuard", "parse_url"]

DEFAULT_TABLE = "sessionmw_events"
#: Seconds a ``webhook-id`` is remembered: the 5-minute tolerance, both ways.
REPLAY_WINDOW = 600.0
#: Rows read per query.
BATCH = 500
#: Rows deleted per retention statement (the next round takes the rest).
DELETE_BATCH = 10_000
#: On a process's first connect, rows created this long before :meth:`PostgresBus.start`
#: are (re)applied, so an event published between start-up and the first read is not
#: missed (applying an old revocation to a young cache is harmless).
START_REPLAY = 2.0
#: Holes remembered at most; beyond that the oldest is given up (and gap-checked).
MAX_HOLES = 1000
#: Lower case so that ``NOTIFY name`` from psql (folded to lower case) is our channel;
#: short enough for the ``_replay`` table and the index names to fit in 63 bytes.
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_COLUMNS = "id, created_at, type, session_id, user_id, before"

_T = TypeVar("_T")

# Connections a forked child inherited, kept referenced there: closing one would end
# the parent's session (libpq's Terminate on the shared socket), and letting it be
# collected warns that it was never closed (psycopg itself does not finish a
# connection of another process).
_ORPHANS: list[Any] = []


def parse_url(url: str) -> tuple[str, str]:
    """``(libpq URL without ?table=, table name)``; ConfigError naming ``bus``."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError("bus", f"not a postgresql:// URL: {scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    tables = [value for key, value in query if key == "table"]
    if len(tables) > 1:
        raise ConfigError("bus", "?table= given more than once")
    table = tables[0] if tables else DEFAULT_TABLE
    if not _TABLE_NAME.match(table):
        raise ConfigError(
            "bus",
            f"table name {table!r} must be a lower-case SQL identifier of at most 48 "
            "characters ([a-z_][a-z0-9_]*)",
        )
    rest = urlencode([(key, value) for key, value in query if key != "table"])
    conninfo = urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment))
    try:
        conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError("bus", f"not a valid PostgreSQL URL: {exc}") from None
    return conninfo, table


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _identity(
    host: str | None, port: Any, dbname: str | None, user: str | None
) -> tuple[str, int, str, str]:
    """(host, port, database, user) as libpq would resolve the defaults."""
    host = host or os.environ.get("PGHOST") or ""
    if host.lower() in _LOOPBACK:
        host = "localhost"
    try:
        number = int(port or os.environ.get("PGPORT") or 5432)
    except ValueError:
        number = -1
    user = user or os.environ.get("PGUSER") or getpass.getuser()
    dbname = dbname or os.environ.get("PGDATABASE") or user
    return host, number, dbname, user


def _sent_at(value: Any) -> float | None:
    return float(value) if isinstance(value, float) and math.isfinite(value) else None


@dataclass
class _Hole:
    """Ids ``lo..hi`` not read yet: uncommitted, rolled back, or deleted."""

    lo: int
    hi: int
    noticed: float
    #: ``xmax`` of a snapshot taken once the hole was ``grace`` old: when the oldest
    #: running transaction is past it, every writer of these ids has ended.
    horizon: int | None = None
    found: set[int] = field(default_factory=set)


class _Pool:
    """A few idle connections for producers, taken and given back under a lock.

    A pooled connection found dead (a restarted server) is replaced once, at its
    first use; anything longer is the caller's retry."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int = 4) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        for attempt in (0, 1):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = self._connect()
            try:
                result = work(conn)
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    conn.close()
                if reused and attempt == 0 and conn.broken:
                    continue
                raise
            except BaseException:
                self._give(conn)
                raise
            self._give(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(Exception):
                conn.close()
            return
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def after_fork(self) -> None:
        _ORPHANS.extend(self._idle)
        self._idle = []
        self._lock = threading.Lock()


class PostgresReplayGuard(SharedReplayGuard):
    """``webhook-id`` / ``jti`` dedupe in ``{table}_replay``, shared by every process.

    :meth:`claim` is one ``INSERT … ON CONFLICT (digest) DO UPDATE … WHERE expired``:
    true when the digest was absent or its claim had expired. It raises
    :class:`~sessionmw.BusUnavailable` when the database does not answer (the hook
    then answers 503 and the producer retries); :meth:`release` never raises.
    """

    def __init__(
        self,
        bus: PostgresBus,
        window: float = REPLAY_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self.window = window
        self.clock = clock
        table = sql.Identifier(bus.table + "_replay")
        self._claim = sql.SQL(
            "INSERT INTO {t} AS r (digest, expires_at) VALUES (%s, %s) "
            "ON CONFLICT (digest) DO UPDATE SET expires_at = EXCLUDED.expires_at "
            "WHERE r.expires_at <= %s RETURNING 1"
        ).format(t=table)
        self._release = sql.SQL("DELETE FROM {t} WHERE digest = %s").format(t=table)

    def claim(self, webhook_id: str) -> bool:
        now = self.clock()
        key = digest(webhook_id)
        try:
            row = self._bus.run(
                lambda conn: conn.execute(self._claim, (key, now + self.window, now)).fetchone()
            )
        except psycopg.Error as exc:
            raise BusUnavailable(f"replay guard unavailable: {type(exc).__name__}") from None
        return row is not None

    def _forget(self, webhook_id: str) -> None:
        key = digest(webhook_id)
        self._bus.run(lambda conn: conn.execute(self._release, (key,)))


class PostgresBus(SubscriberBus[psycopg.Connection[Any]]):
    """A table of events plus ``LISTEN``/``NOTIFY`` (SPEC section 12, ``postgresql://``).

    ``retention``: seconds rows are kept (the ``bus_retention`` setting);
    ``timeout``: connect and statement timeouts of the producers. Keyword-only knobs
    for tests and unusual deployments: ``block`` (longest wait for a notification,
    also how late :meth:`stop` may be), ``check_interval`` (seconds between safety-net
    reads and gap checks), ``retention_interval`` (seconds between deletes, jittered
    down to half), ``hole_grace`` (seconds before a hole's horizon is noted),
    ``hole_max_age`` (a hole still open after this is given up), ``backoff_base`` /
    ``backoff_cap`` (reconnect delays, exponential with jitter), ``clock`` (wall
    clock for ``created_at`` and retention), ``wait``, ``rng``.
    """

    def __init__(
        self,
        url: str,
        *,
        retention: float = 86400.0,
        timeout: float = 2.0,
        block: float = 1.0,
        check_interval: float = 5.0,
        retention_interval: float = 5.0,
        hole_grace: float = 1.0,
        hole_max_age: float = 120.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        clock: Callable[[], float] = time.time,
        wait: Callable[[threading.Event, float], bool] = default_wait,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.conninfo, self.table = parse_url(url)
        if not (isinstance(retention, (int, float)) and math.isfinite(retention) and retention > 0):
            raise ConfigError("bus_retention", f"must be a positive number, got {retention!r}")
        self.retention = float(retention)
        self.timeout = float(timeout)
        self.block = block
        self.check_interval = check_interval
        self.retention_interval = retention_interval
        self.hole_grace = hole_grace
        self.hole_max_age = hole_max_age
        self.clock = clock
        self._params = conninfo_to_dict(self.conninfo)
        table = sql.Identifier(self.table)
        self._sql = {
            "insert": sql.SQL(
                "INSERT INTO {t} (created_at, type, session_id, user_id, before) "
                "SELECT * FROM unnest(%s::float8[], %s::text[], %s::text[], %s::text[], "
                "%s::float8[]) RETURNING id"
            ).format(t=table),
            "notify": sql.SQL("NOTIFY {t}").format(t=table),
            "listen": sql.SQL("LISTEN {t}").format(t=table),
            "read": sql.SQL("SELECT {c} FROM {t} WHERE id > %s ORDER BY id LIMIT {n}").format(
                c=sql.SQL(_COLUMNS), t=table, n=sql.Literal(BATCH)
            ),
            "bounds": sql.SQL(
                "SELECT (SELECT min(id) FROM {t}), (SELECT max(id) FROM {t}), "
                "pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass)"
            ).format(t=table),
            "recent": sql.SQL("SELECT min(id) FROM {t} WHERE created_at >= %s").format(t=table),
            "min": sql.SQL("SELECT min(id) FROM {t}").format(t=table),
            "delete": sql.SQL(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE created_at < %s LIMIT {n})"
            ).format(t=table, n=sql.Literal(DELETE_BATCH)),
            "expire": sql.SQL("DELETE FROM {r} WHERE expires_at <= %s").format(
                r=sql.Identifier(self.table + "_replay")
            ),
        }
        self._pool = _Pool(lambda: self._connect("pub"))
        self._guard = PostgresReplayGuard(self)
        self._schema_ready = False
        self._high: int | None = None
        self._holes: list[_Hole] = []
        self._started_at = 0.0
        super().__init__(
            ("table", self.table),
            self._pool,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            wait=wait,
            rng=rng,
        )
        _fork.register(self)

    def _reset_counters(self) -> None:
        super()._reset_counters()
        self._deleted = 0

    # -- connections ---------------------------------------------------------------

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        params = self._params
        extra: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(2, math.ceil(self.timeout))  # libpq: whole seconds
        if "application_name" not in params:
            # Visible in pg_stat_activity: which processes have a live subscriber.
            extra["application_name"] = f"sessionmw-{role} {os.getpid()} {self.table}"
        if "options" not in params:
            ms = max(1, round(self.timeout * 1000))
            extra["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
        if "keepalives" not in params:  # a silently dead network is noticed in ~15 s
            extra.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        return psycopg.connect(self.conninfo, **extra)

    def run(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """``work(conn)`` on a pooled producer connection (autocommit), the tables
        created first if need be. psycopg errors propagate."""

        def with_schema(conn: psycopg.Connection[Any]) -> _T:
            self._ensure_schema(conn)
            return work(conn)

        return self._pool.run(with_schema)

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create the events and replay tables if missing (once per bus; concurrent
        creators serialise on an advisory lock; nothing is created when they exist,
        so a role without CREATE works on tables made by someone else)."""
        if self._schema_ready:
            return
        table, replay = self.table, self.table + "_replay"
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            (sql.Identifier(table).as_string(conn), sql.Identifier(replay).as_string(conn)),
        ).fetchone()
        if found is not None and all(found):
            self._schema_ready = True
            return
        names = {
            "t": sql.Identifier(table),
            "t_idx": sql.Identifier(f"{table}_created_at_idx"),
            "r": sql.Identifier(replay),
            "r_idx": sql.Identifier(f"{replay}_expires_idx"),
        }
        statements = (
            "CREATE TABLE IF NOT EXISTS {t} (id BIGSERIAL PRIMARY KEY, "
            "created_at DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, "
            "session_id TEXT NULL, user_id TEXT NULL, before DOUBLE PRECISION NULL)",
            "CREATE INDEX IF NOT EXISTS {t_idx} ON {t} (created_at)",
            "CREATE TABLE IF NOT EXISTS {r} (digest BYTEA PRIMARY KEY, "
            "expires_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS {r_idx} ON {r} (expires_at)",
        )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sessionmw:{table}",))
            for statement in statements:
                conn.execute(sql.SQL(statement).format(**names))
        self._schema_ready = True

    def ensure_schema(self) -> None:
        """Create the tables now if missing (otherwise done on first use)."""
        try:
            self.run(lambda conn: None)
        except psycopg.Error as exc:
            raise BusUnavailable(f"PostgreSQL bus unavailable: {type(exc).__name__}") from None

    def drop_schema(self) -> None:
        """``DROP TABLE IF EXISTS`` the events and replay tables (tests, teardown)."""
        tables = sql.SQL(", ").join(
            [sql.Identifier(self.table), sql.Identifier(self.table + "_replay")]
        )
        self._pool.run(lambda conn: conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tables)))
        self._schema_ready = False

    # -- Bus protocol (start, stop, after_fork, apublish, stats: SubscriberBus) ---

    @property
    def replay_guard(self) -> PostgresReplayGuard:
        return self._guard

    def _reset_after_fork(self) -> None:
        # The holes stay with the position (SubscriberBus.after_fork).
        self.after_fork()

    def publish(self, events: Sequence[Event]) -> None:
        """Insert one row per event and NOTIFY, in one transaction (whole batch or
        nothing); raises BusUnavailable."""
        self.publish_ids(events)

    def publish_ids(self, events: Sequence[Event]) -> list[str]:
        """Like :meth:`publish`, returning the ids the rows were given."""
        if not events:
            return []
        columns = self._columns(events)

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            with conn.transaction():
                ids = [str(row[0]) for row in conn.execute(self._sql["insert"], columns)]
                conn.execute(self._sql["notify"])
            return ids

        try:
            return self.run(work)
        except psycopg.Error as exc:
            raise BusUnavailable(f"PostgreSQL bus unavailable: {type(exc).__name__}") from None

    def _columns(self, events: Sequence[Event]) -> tuple[list[Any], ...]:
        now = self.clock()
        created: list[float] = []
        kinds: list[str] = []
        sessions: list[str | None] = []
        users: list[str | None] = []
        befores: list[float | None] = []
        for event in events:
            created.append(now)
            kinds.append(event.type)
            sessions.append(getattr(event, "session_id", None))
            users.append(getattr(event, "user_id", None))
            if isinstance(event, UserSessionsRevoked):
                # "default: the time the event is received": fixed now, so every
                # process (and a late reader) revokes the same sessions.
                befores.append(now if event.before is None else event.before)
            else:
                befores.append(None)
        return created, kinds, sessions, users, befores

    # -- one transaction with a SQL store --------------------------------------------

    def same_database(self, url: URL) -> bool:
        """Whether a SQLAlchemy URL (a SQL store's) names this bus's database: same
        host, port, database and user once defaults are filled in (``localhost``,
        ``127.0.0.1`` and ``::1`` count as one host)."""
        if url.get_backend_name() != "postgresql":
            return False
        query_host = url.query.get("host")
        host = url.host or (query_host if isinstance(query_host, str) else None)
        theirs = _identity(host, url.port, url.database, url.username)
        p = {key: str(value) for key, value in self._params.items() if value is not None}
        return theirs == _identity(p.get("host"), p.get("port"), p.get("dbname"), p.get("user"))

    def write_events(self, conn: SAConnection, events: Sequence[Event]) -> None:
        """Insert the events and NOTIFY on ``conn`` (a SQLAlchemy connection of the
        same database), inside its open transaction: they commit or roll back with
        whatever else that transaction wrote. Raises BusUnavailable (and leaves the
        transaction to be rolled back) when the insert fails."""
        if not events:
            return
        import sqlalchemy as sa  # only reached with a SQL store, which brought it
        from sqlalchemy.exc import SQLAlchemyError

        self.ensure_schema()
        created, kinds, sessions, users, befores = self._columns(events)
        rows = [
            {"c": c, "t": t, "s": s, "u": u, "b": b}
            for c, t, s, u, b in zip(created, kinds, sessions, users, befores, strict=True)
        ]
        events_table = sa.table(
            self.table,
            *(
                sa.column(name)
                for name in ("created_at", "type", "session_id", "user_id", "before")
            ),
        )
        insert = sa.insert(events_table).values(
            created_at=sa.bindparam("c"),
            type=sa.bindparam("t"),
            session_id=sa.bindparam("s"),
            user_id=sa.bindparam("u"),
            before=sa.bindparam("b"),
        )
        try:
            conn.execute(insert, rows)
            conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": self.table})
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            raise BusUnavailable(f"PostgreSQL bus unavailable: {type(detail).__name__}") from None

    # -- the subscriber (the thread itself: SubscriberBus) --------------------------------
    @property
    def cursor(self) -> int | None:
        """Every id up to this one has been read or given up (holes excluded)."""
        if self._high is None:
            return None
        return min([self._high, *(hole.lo - 1 for hole in self._holes)])

    _connection_errors = (psycopg.Error, OSError)

    def _mark_start(self) -> None:
        if self._high is None and not self._started_at:
            self._started_at = self.clock()

    @property
    def _block_seconds(self) -> float:
        return self.block

    def _position(self) -> int | None:
        return self.cursor

    def _more_stats(self) -> dict[str, Any]:
        return {"holes": len(self._holes), "deleted": self._deleted}

    def _open(self) -> psycopg.Connection[Any]:
        return self._connect("bus")

    def _orphan(self, conn: psycopg.Connection[Any]) -> None:
        _ORPHANS.append(conn)  # closing it would end the parent's session

    def _interrupt(self, conn: psycopg.Connection[Any]) -> None:
        """Wake a subscriber waiting for a notification (stop): shut its socket down."""
        if conn.closed:
            return
        with contextlib.suppress(Exception):
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    def _on_connect(self, conn: psycopg.Connection[Any]) -> None:
        """LISTEN first (nothing committed after this is missed), then check for a
        gap, read up to the end, and only then count as connected."""
        self._schema_ready = False  # dropped while we were away? made again, then a gap
        self._ensure_schema(conn)
        conn.execute(self._sql["listen"])
        self._check(conn, connecting=True)
        self._read(conn)
        self._now_connected(cursor=self.cursor)

    def _follow(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        now = time.monotonic()
        next_check = now + self.check_interval
        next_retention = now + self._retention_delay()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_retention:
                self._retain(conn)
                next_retention = now + self._retention_delay()
            if now >= next_check:
                self._check(conn, connecting=False)
                self._read(conn)
                next_check = now + self.check_interval
            if self._holes:
                self._resolve(conn)
            until = min(next_check, next_retention) - time.monotonic()
            if self._holes:
                until = min(until, max(0.05, self.hole_grace / 4))
            timeout = max(0.0, min(self.block, until))
            woke = False
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke and not stop.is_set():
                self._read(conn)

    # -- reading -------------------------------------------------------------------------

    def _read(self, conn: psycopg.Connection[Any]) -> None:
        """Apply the rows after the highest id read, noting the ids skipped as holes;
        then whatever has appeared in the holes."""
        while True:
            high = self._high or 0
            rows = conn.execute(self._sql["read"], (high,)).fetchall()
            applied: list[Event] = []
            for row in rows:
                row_id = int(row[0])
                if row_id > high + 1:
                    self._note_hole(high + 1, row_id - 1)
                high = self._high = row_id
                self._apply(row, applied)
            self._applied_log(applied)
            if len(rows) < BATCH:
                break
        if self._holes:
            self._fill(conn)

    def _note_hole(self, lo: int, hi: int) -> None:
        self._holes.append(_Hole(lo, hi, time.monotonic()))
        if len(self._holes) > MAX_HOLES:
            # Given up unresolved: whatever it may still receive is treated as lost.
            self._holes.pop(0)
            self._gap("too_many_holes")

    def _fill(self, conn: psycopg.Connection[Any]) -> None:
        """Read the rows that have appeared in the holes since they were noticed."""
        ranges = sql.SQL(" OR ").join(
            sql.SQL("id BETWEEN {} AND {}").format(sql.Literal(h.lo), sql.Literal(h.hi))
            for h in self._holes
        )
        query = sql.SQL("SELECT {c} FROM {t} WHERE {r} ORDER BY id").format(
            c=sql.SQL(_COLUMNS), t=sql.Identifier(self.table), r=ranges
        )
        applied: list[Event] = []
        for row in conn.execute(query).fetchall():
            row_id = int(row[0])
            for hole in self._holes:
                if hole.lo <= row_id <= hole.hi and row_id not in hole.found:
                    hole.found.add(row_id)
                    self._apply(row, applied)
                    break
        self._applied_log(applied)
        self._holes = [h for h in self._holes if len(h.found) < h.hi - h.lo + 1]

    def _resolve(self, conn: psycopg.Connection[Any]) -> None:
        """Close the holes whose writers have all ended (reading them one last time);
        a missing id below every row still kept is a gap."""
        snapshot = conn.execute(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
            "FROM pg_current_snapshot() s"
        ).fetchone()
        assert snapshot is not None
        xmin, xmax = int(snapshot[0]), int(snapshot[1])
        now = time.monotonic()
        done: list[_Hole] = []
        for hole in self._holes:
            if hole.horizon is None:
                if now - hole.noticed >= self.hole_grace:
                    hole.horizon = xmax
            elif xmin >= hole.horizon or now - hole.noticed >= self.hole_max_age:
                done.append(hole)
        if not done:
            return
        self._fill(conn)  # after the snapshot: sees every commit of those writers
        closing = [h for h in done if h in self._holes]
        if not closing:
            return
        self._holes = [h for h in self._holes if h not in closing]
        row = conn.execute(self._sql["min"]).fetchone()
        oldest = row[0] if row is not None else None
        for hole in closing:
            missing = next(i for i in range(hole.lo, hole.hi + 1) if i not in hole.found)
            if oldest is None or missing < oldest:
                self._gap("deleted")
                break

    def _apply(self, row: tuple[Any, ...], applied: list[Event]) -> None:
        row_id, created_at, kind, session_id, user_id, before = row
        fields: dict[str, Any] = {"type": kind}
        if session_id is not None:
            fields["session_id"] = session_id
        if user_id is not None:
            fields["user_id"] = user_id
        if before is not None:
            fields["before"] = before
        try:
            event = parse_event(fields)
        except InvalidPayload as exc:
            self._bad_entry(row_id, str(exc))
            return
        sent_at = _sent_at(created_at)
        if isinstance(event, UserSessionsRevoked) and event.before is None:
            event = UserSessionsRevoked(event.user_id, sent_at)
        if self._deliver(event, sent_at) is not None:
            applied.append(event)

    # -- gaps and retention ------------------------------------------------------------

    def _check(self, conn: psycopg.Connection[Any], *, connecting: bool) -> None:
        """Compare the position with the table's ids: recreated table, or rows after
        the position deleted (a gap now when connecting; a hole to resolve otherwise,
        since an uncommitted insert looks the same for a moment)."""
        row = conn.execute(self._sql["bounds"], (self.table,)).fetchone()
        assert row is not None
        oldest, newest, last = row
        if self._high is None:  # first connect of this process: start near the end
            recent = conn.execute(
                self._sql["recent"], (self._started_at - START_REPLAY,)
            ).fetchone()
            first = recent[0] if recent is not None else None
            if first is not None:
                self._high = int(first) - 1
            else:
                self._high = int(newest if newest is not None else (last or 0))
            return
        high = self._high
        if (last or 0) < high:
            # The sequence is behind us: the table was dropped and created again.
            self._holes = []
            self._high = 0
            self._gap("table_recreated")
            return
        if oldest is not None:
            if oldest <= high + 1:
                return
            missing_to = int(oldest) - 1
        elif last is not None and last > high:
            missing_to = int(last)  # ids were given out after us, and no row is left
        else:
            return
        if connecting:
            self._holes = []
            self._high = missing_to
            self._gap("deleted")
        else:
            self._note_hole(high + 1, missing_to)
            self._high = missing_to

    def _retention_delay(self) -> float:
        return float(self.retention_interval * (0.5 + self._rng() / 2))

    def _retain(self, conn: psycopg.Connection[Any]) -> None:
        """Delete rows older than the retention and expired replay claims, if no other
        subscriber is doing so right now (an advisory lock, tried, never waited for)."""
        with conn.transaction():
            got = conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s))",
                (f"sessionmw-retention:{self.table}",),
            ).fetchone()
            if not (got and got[0]):
                return
            now = self.clock()
            deleted = conn.execute(self._sql["delete"], (now - self.retention,)).rowcount
            conn.execute(self._sql["expire"], (now,))
        self._deleted += max(0, deleted)
