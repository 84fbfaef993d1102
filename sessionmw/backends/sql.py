"""A SQL table of sessions, through SQLAlchemy 2 (``sqlite:///…``, ``postgresql://…``).

Layout (SPEC section 6)::

    session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, status TEXT NOT NULL,
    expires_at DOUBLE/REAL NULL, issued_at DOUBLE/REAL NULL, data TEXT NULL (JSON),
    last_seen DOUBLE/REAL NULL, idp_sid TEXT NULL
    + an index on user_id and one on idp_sid

A table of the previous layout (without ``last_seen``, ``idp_sid`` and the indexes)
keeps answering lookups: the backend reads the table's columns once and selects
only those. ``create_schema`` (``sessionmw sessions migrate``) adds what is missing.

The table is ``device_sessions`` unless the URL names another with ``?table=NAME``
(the parameter is removed before the URL reaches SQLAlchemy). The engine is built on
first use, so a backend constructed before a pre-forking server forks is safe; a
child process drops (without closing) the pooled connections it inherited.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    NoSuchTableError,
    SQLAlchemyError,
)

from sessionmw import _fork
from sessionmw._compat import MissingExtra
from sessionmw.backends._errors import scrub, within
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import (
    SessionRecord,
    SessionStatus,
    StoredSession,
    latest_touches,
    lookup_answer,
    stored_or_none,
)
from sessionmw.settings import redact_url

__all__ = ["DEFAULT_TABLE", "SQLBackend"]

DEFAULT_TABLE = "device_sessions"
_SOURCE = "sql"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: The columns of the previous layout, then those section 11 added.
_OLD_COLUMNS = ("user_id", "status", "expires_at", "issued_at", "data")
_NEW_COLUMNS = ("last_seen", "idp_sid")
_COLUMNS = _OLD_COLUMNS + _NEW_COLUMNS
_INDEXED = ("user_id", "idp_sid")
#: Sessions per ``touch_many`` statement (bounds the bound parameters per statement).
_TOUCH_CHUNK = 1000

_T = TypeVar("_T")
#: Work a caller adds to a revoking transaction: ``(connection, revoked IDs)``.
InTransaction = Callable[[sa.Connection, list[str]], None]


def _index_name(table: str, column: str) -> str:
    """``ix_{table}_{column}``, shortened with a digest of the table name to stay
    within PostgreSQL's 63 characters."""
    name = f"ix_{table}_{column}"
    if len(name) > 63:
        digest = hashlib.sha256(table.encode()).hexdigest()[:8]
        name = f"ix_{table[: 50 - len(column)]}_{digest}_{column}"
    return name


def _table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("session_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
        sa.Column("issued_at", sa.Double, nullable=True),
        sa.Column("data", sa.Text, nullable=True),
        sa.Column("last_seen", sa.Double, nullable=True),
        sa.Column("idp_sid", sa.Text, nullable=True),
        *(sa.Index(_index_name(name, column), column) for column in _INDEXED),
    )


def _data_json(record: SessionRecord) -> str | None:
    return json.dumps(dict(record.data), separators=(",", ":")) if record.data else None


def _normalise_url(url: URL) -> URL:
    """``postgres://`` is not a SQLAlchemy dialect name; psycopg 3 when psycopg2 is absent."""
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql" and not driver and importlib.util.find_spec("psycopg2") is None:
        driver = "psycopg"
    drivername = f"{backend}+{driver}" if driver else backend
    return url.set(drivername=drivername) if drivername != url.drivername else url


def _load_driver(url: URL) -> None:
    """Import the URL's DBAPI driver now, so a missing one fails when the store is
    built (at start-up, with the extra to install), not at the first lookup."""
    try:
        dialect = url.get_dialect()
    except (NoSuchModuleError, ArgumentError):
        raise ConfigError("backend", f"SQLAlchemy has no dialect {url.drivername!r}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        missing = (exc.name or "").split(".", 1)[0] or "its driver"
        if url.get_backend_name() != "postgresql":
            raise ConfigError(
                "backend", f"the {url.drivername} driver {missing!r} is not installed"
            ) from None
        if missing == "psycopg2":
            hint = (
                "pip install psycopg2-binary, or pip install 'sessionmw[postgres]' "
                "and use a postgresql+psycopg:// URL"
            )
        else:
            hint = "pip install 'sessionmw[postgres]'"
        raise MissingExtra(
            f"the PostgreSQL store needs {missing!r}, which is not installed: {hint}"
        ) from exc


class SQLBackend:
    """Sessions in a SQL table. ``engine``: an existing :class:`sqlalchemy.engine.Engine`
    to use instead of one built from ``url`` (its owner keeps disposing of it)."""

    def __init__(self, url: str, *, timeout: float = 2.0, engine: Engine | None = None) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError("backend_timeout", f"must be a positive number, got {timeout!r}")
        if engine is not None and not isinstance(engine, Engine):
            raise ConfigError("backend", f"not a sync SQLAlchemy Engine: {type(engine).__name__}")
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError("backend", "not a valid SQLAlchemy URL") from None
        given = parse_qs(urlsplit(url).query, keep_blank_values=True).get("table", [])
        if len(given) > 1:
            raise ConfigError("backend", "?table= given more than once")
        table = given[0] if given else DEFAULT_TABLE
        if not _IDENTIFIER.match(table):
            raise ConfigError("backend", f"table name {table!r} is not a plain SQL identifier")
        self.timeout = float(timeout)
        self.table_name = table
        self._url = _normalise_url(parsed.difference_update_query(["table"]))
        if engine is None:
            _load_driver(self._url)
        self._table = _table(table)
        # The table's columns, read once (None: not read yet, or no table then).
        self._layout: frozenset[str] | None = None
        self._get_sql: dict[frozenset[str], sa.Select[Any]] = {}
        self._given_engine = engine
        self._engine: Engine | None = engine
        self._pid = os.getpid()
        self._reset_after_fork()
        _fork.register(self)

    def _reset_after_fork(self) -> None:
        # Also run in a forked child: a lock held by a parent thread would never be freed.
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_threads = 0

    def __repr__(self) -> str:
        url = redact_url(self._url.render_as_string(hide_password=True))
        return f"<SQLBackend {url} table={self.table_name}>"

    # -- engine ------------------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        query = self._url.query
        backend = self._url.get_backend_name()
        args: dict[str, Any] = {}
        if backend == "sqlite":
            if "timeout" not in query:
                args["timeout"] = self.timeout
        elif backend == "postgresql":
            if "connect_timeout" not in query:
                # libpq counts whole seconds (and at least 2).
                args["connect_timeout"] = max(2, math.ceil(self.timeout))
            if "options" not in query:
                args["options"] = f"-c statement_timeout={max(1, round(self.timeout * 1000))}"
        return args

    def _build_engine(self) -> Engine:
        kwargs: dict[str, Any] = {"connect_args": self._connect_args(), "pool_pre_ping": True}
        in_memory = self._url.database in (None, "", ":memory:")
        if self._url.get_backend_name() != "sqlite" or not in_memory:
            kwargs["pool_timeout"] = self.timeout
        try:
            return sa.create_engine(self._url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise ConfigError("backend", f"cannot build an engine: {exc}") from None

    def _get_engine(self) -> Engine:
        pid = os.getpid()
        engine = self._engine
        if engine is not None and pid == self._pid:
            return engine
        with self._lock:
            if self._pid != pid:
                # Forked: the parent's pooled connections are not ours to use or close.
                if self._engine is not None:
                    self._engine.dispose(close=False)
                self._pid = pid
                self._engine = self._given_engine
            if self._engine is None:
                self._engine = self._build_engine()
            return self._engine

    @property
    def engine(self) -> Engine:
        """The engine in use (built on first access)."""
        return self._get_engine()

    def close(self) -> None:
        """Dispose of the engine this backend built (a given engine is left alone).

        Lookups that an :meth:`alookup` gave up on may still run in a worker thread
        (each is bounded by the statement timeout): wait a little for them first, so
        their connections go back to the pool and are closed with it.
        """
        with self._idle:
            self._idle.wait_for(lambda: self._in_threads == 0, timeout=self.timeout + 1.0)
        with self._lock:
            engine, self._engine = self._engine, self._given_engine
        if engine is not None and engine is not self._given_engine:
            engine.dispose()

    def _unavailable(self, exc: BaseException, *session_ids: str) -> BackendUnavailable:
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        lines = str(detail).strip().splitlines()
        text = scrub(lines[0], *session_ids) if lines else ""
        message = f"SQL backend unavailable: {type(detail).__name__}"
        return BackendUnavailable(f"{message}: {text}" if text else message)

    # -- the table's layout --------------------------------------------------------

    def _columns(self, conn: sa.Connection, *, fresh: bool = False) -> frozenset[str]:
        """The session columns the table has, read once per backend (``fresh``: read
        again). A missing table reads as the full layout, so the statement fails as
        it always did (BackendUnavailable)."""
        layout = self._layout
        if layout is None or fresh:
            try:
                found = {column["name"] for column in sa.inspect(conn).get_columns(self.table_name)}
            except NoSuchTableError:
                return frozenset(_COLUMNS)
            layout = self._layout = frozenset(name for name in _COLUMNS if name in found)
        return layout

    def _require(self, conn: sa.Connection, *columns: str) -> None:
        """BackendUnavailable, saying to migrate, when the table lacks ``columns``
        (read again first: another process may have migrated it)."""
        if all(name in self._columns(conn) for name in columns):
            return
        layout = self._columns(conn, fresh=True)
        missing = [name for name in columns if name not in layout]
        if missing:
            raise BackendUnavailable(
                f"SQL table {self.table_name} has no column {', '.join(missing)} (an older "
                "layout, read-only): run `sessionmw sessions migrate --backend URL`"
            )

    def _select(self, layout: frozenset[str]) -> sa.Select[Any]:
        stmt = self._get_sql.get(layout)
        if stmt is None:
            table = self._table
            stmt = sa.select(*(table.c[name] for name in _COLUMNS if name in layout)).where(
                table.c.session_id == sa.bindparam("sid")
            )
            self._get_sql[layout] = stmt
        return stmt

    # -- lookups -----------------------------------------------------------------

    def get(self, session_id: str) -> StoredSession | None:
        """The stored session, or ``None`` (unknown, or malformed: logged)."""
        try:
            with self._get_engine().connect() as conn:
                stmt = self._select(self._columns(conn))
                row = conn.execute(stmt, {"sid": session_id}).mappings().first()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, session_id) from None
        if row is None:
            return None
        return stored_or_none(session_id, dict(row), source=_SOURCE)

    def lookup(self, session_id: str) -> SessionRecord | None:
        return lookup_answer(self.get(session_id))

    async def alookup(self, session_id: str) -> SessionRecord | None:
        """Run :meth:`lookup` in a worker thread, bounded by ``timeout``."""
        return await self._off_loop(self.lookup, session_id)

    async def aget(self, session_id: str) -> StoredSession | None:
        return await self._off_loop(self.get, session_id)

    async def _off_loop(self, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` in a worker thread, bounded by ``timeout``; :meth:`close`
        waits for the threads still running."""
        return await within(asyncio.to_thread(self._in_thread, func, *args), self.timeout, "SQL")

    def _in_thread(self, func: Callable[..., _T], *args: Any) -> _T:
        with self._idle:
            self._in_threads += 1
        try:
            return func(*args)
        finally:
            with self._idle:
                self._in_threads -= 1
                self._idle.notify_all()

    # -- lifecycle (SPEC section 11) ---------------------------------------------

    def create(self, session: StoredSession) -> None:
        """Insert a new session (every field); ``ValueError`` when its ID is taken.
        A table of the older layout cannot take one: BackendUnavailable saying to
        migrate."""
        values = {
            "session_id": session.session_id,
            "user_id": session.user_id,
            "status": SessionStatus(session.status).value,
            "expires_at": session.expires_at,
            "issued_at": session.issued_at,
            "data": _data_json(session),
            "last_seen": session.last_seen,
            "idp_sid": session.idp_sid,
        }
        try:
            with self._get_engine().begin() as conn:
                self._require(conn, *_NEW_COLUMNS)
                conn.execute(self._table.insert().values(**values))
        except IntegrityError:
            raise ValueError("a session with this ID is already in the store") from None
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, session.session_id) from None

    async def acreate(self, session: StoredSession) -> None:
        await self._off_loop(self.create, session)

    def list_user(self, user_id: str) -> list[StoredSession]:
        """The user's active, unexpired sessions, newest first (by the user_id index);
        malformed rows are logged and skipped."""
        table = self._table
        now = time.time()
        try:
            with self._get_engine().connect() as conn:
                layout = self._columns(conn)
                stmt = (
                    sa.select(table.c.session_id, *(table.c[c] for c in _COLUMNS if c in layout))
                    .where(
                        table.c.user_id == user_id,
                        table.c.status == SessionStatus.ACTIVE.value,
                        sa.or_(table.c.expires_at.is_(None), table.c.expires_at > now),
                    )
                    .order_by(table.c.issued_at.desc().nulls_last(), table.c.session_id)
                )
                rows = conn.execute(stmt).mappings().all()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        found = []
        for row in rows:
            session_id = row["session_id"]
            if not isinstance(session_id, str):
                continue
            stored = stored_or_none(session_id, dict(row), source=_SOURCE)
            if stored is not None and stored.active and not stored.expired(now):
                found.append(stored)
        return found

    async def alist_user(self, user_id: str) -> list[StoredSession]:
        return await self._off_loop(self.list_user, user_id)

    def revoke(self, session_id: str, *, also: InTransaction | None = None) -> bool:
        """Mark the session revoked; ``True`` only if it was active (one
        ``UPDATE … WHERE status = 'active'``).

        ``also(conn, revoked_ids)`` runs inside the same transaction before it commits
        (a bus writing the event there); whatever it raises rolls the update back."""
        table = self._table
        stmt = (
            table.update()
            .where(table.c.session_id == session_id, table.c.status == SessionStatus.ACTIVE.value)
            .values(status=SessionStatus.REVOKED.value)
        )
        try:
            with self._get_engine().begin() as conn:
                result = conn.execute(stmt)
                if also is not None:
                    also(conn, [session_id] if result.rowcount == 1 else [])
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, session_id) from None
        return result.rowcount == 1

    async def arevoke(self, session_id: str) -> bool:
        return await self._off_loop(self.revoke, session_id)

    def revoke_user(
        self, user_id: str, keep: str | None = None, *, also: InTransaction | None = None
    ) -> list[str]:
        """Revoke the user's active, unexpired sessions except ``keep``, in one
        statement; the IDs it revoked, sorted. ``also``: as for :meth:`revoke`."""
        table = self._table
        conditions = [
            table.c.user_id == user_id,
            table.c.status == SessionStatus.ACTIVE.value,
            sa.or_(table.c.expires_at.is_(None), table.c.expires_at > time.time()),
        ]
        if keep is not None:
            conditions.append(table.c.session_id != keep)
        revoked = SessionStatus.REVOKED.value
        secrets = [keep] if keep else []
        try:
            with self._get_engine().begin() as conn:
                if conn.dialect.update_returning:
                    stmt = table.update().where(*conditions).values(status=revoked)
                    ids = list(conn.execute(stmt.returning(table.c.session_id)).scalars())
                else:  # pragma: no cover - SQLite and PostgreSQL both have RETURNING
                    chosen = sa.select(table.c.session_id).where(*conditions).with_for_update()
                    ids = []
                    for sid in conn.execute(chosen).scalars().all():
                        one = table.update().where(table.c.session_id == sid, *conditions[1:])
                        if conn.execute(one.values(status=revoked)).rowcount == 1:
                            ids.append(sid)
                ids = sorted(str(sid) for sid in ids)
                if also is not None:
                    also(conn, ids)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, *secrets) from None
        return ids

    def revoke_idp_sid(self, idp_sid: str, *, also: InTransaction | None = None) -> list[str]:
        """Revoke the active sessions created with this identity-provider session, in
        one statement; the IDs it revoked, sorted (none on a table of the older
        layout). ``also``: as for :meth:`revoke`."""
        table = self._table
        try:
            with self._get_engine().begin() as conn:
                ids: list[str] = []
                if "idp_sid" in self._columns(conn):
                    stmt = (
                        table.update()
                        .where(
                            table.c.idp_sid == idp_sid,
                            table.c.status == SessionStatus.ACTIVE.value,
                        )
                        .values(status=SessionStatus.REVOKED.value)
                        .returning(table.c.session_id)
                    )
                    ids = sorted(str(sid) for sid in conn.execute(stmt).scalars())
                if also is not None:
                    also(conn, ids)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        return ids

    async def arevoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        return await self._off_loop(self.revoke_user, user_id, keep)

    def ids_for_idp_sid(self, idp_sid: str) -> list[str]:
        """The IDs of the sessions created with this identity-provider session (by
        the idp_sid index), sorted; none on a table of the older layout."""
        table = self._table
        try:
            with self._get_engine().connect() as conn:
                if "idp_sid" not in self._columns(conn):
                    return []
                stmt = (
                    sa.select(table.c.session_id)
                    .where(table.c.idp_sid == idp_sid)
                    .order_by(table.c.session_id)
                )
                return [str(sid) for sid in conn.execute(stmt).scalars()]
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    async def aids_for_idp_sid(self, idp_sid: str) -> list[str]:
        return await self._off_loop(self.ids_for_idp_sid, idp_sid)

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Move ``last_seen`` forward (never back) for the sessions that exist, in one
        ``UPDATE`` (one per 1000 sessions); no row is created. No I/O when empty."""
        latest = list(latest_touches(items).items())
        if not latest:
            return
        try:
            with self._get_engine().begin() as conn:
                self._require(conn, "last_seen")
                for start in range(0, len(latest), _TOUCH_CHUNK):
                    conn.execute(self._touch_sql(conn, latest[start : start + _TOUCH_CHUNK]))
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, *(sid for sid, _ in latest)) from None

    def _touch_sql(self, conn: sa.Connection, items: list[tuple[str, float]]) -> sa.Update:
        table = self._table
        if conn.dialect.name == "postgresql":
            # UPDATE … FROM (VALUES …): one hash join, whatever the batch size.
            touched = sa.values(
                sa.column("sid", sa.Text), sa.column("seen", sa.Double), name="touched"
            ).data(items)
            seen: Any = touched.c.seen
            match: Any = table.c.session_id == touched.c.sid
        else:
            # Portable: UPDATE … SET last_seen = CASE session_id WHEN … END WHERE … IN (…).
            seen = sa.case(
                {sid: sa.literal(value, sa.Double) for sid, value in items},
                value=table.c.session_id,
            )
            match = table.c.session_id.in_([sid for sid, _ in items])
        return (
            table.update()
            .where(match, sa.or_(table.c.last_seen.is_(None), table.c.last_seen < seen))
            .values(last_seen=seen)
        )

    async def atouch_many(self, items: Sequence[tuple[str, float]]) -> None:
        await self._off_loop(self.touch_many, items)

    # -- management (CLI, demo) -------------------------------------------------

    def _missing(self, conn: sa.Connection) -> tuple[bool, list[str], list[str]]:
        """(table exists, missing columns, missing indexed columns)."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.table_name):
            return False, list(_NEW_COLUMNS), list(_INDEXED)
        columns = {column["name"] for column in inspector.get_columns(self.table_name)}
        indexed = {
            names[0]
            for index in inspector.get_indexes(self.table_name)
            if (names := index.get("column_names")) and names[0]
        }
        return (
            True,
            [name for name in _NEW_COLUMNS if name not in columns],
            [name for name in _INDEXED if name not in indexed],
        )

    def _describe(self, exists: bool, columns: list[str], indexed: list[str]) -> list[str]:
        if not exists:
            return [f"table {self.table_name}"]
        table = self.table_name
        return [f"column {table}.{name}" for name in columns] + [
            f"index {_index_name(table, name)} on {table} ({name})" for name in indexed
        ]

    def schema_missing(self) -> list[str]:
        """What :meth:`create_schema` would add: ``["table NAME"]`` when the table does
        not exist, else its missing columns (``"column NAME.last_seen"``) and indexes;
        ``[]`` when nothing is missing."""
        try:
            with self._get_engine().connect() as conn:
                return self._describe(*self._missing(conn))
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def create_schema(self) -> list[str]:
        """Create the table (``CREATE TABLE IF NOT EXISTS``, with its indexes), or add
        to an older one the columns (``ALTER TABLE … ADD COLUMN``) and indexes it
        lacks. Never drops anything; what it did, ``[]`` when nothing was missing."""
        engine = self._get_engine()
        try:
            with engine.connect() as conn:
                exists, columns, indexed = self._missing(conn)
            if not exists:
                self._table.metadata.create_all(engine, checkfirst=True)
                done = [f"created {what}" for what in self._describe(exists, columns, indexed)]
            else:
                done = self._add_missing(engine, columns, indexed)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        self._layout = None
        return done

    def _add_missing(self, engine: Engine, columns: list[str], indexed: list[str]) -> list[str]:
        table = self.table_name
        quote = engine.dialect.identifier_preparer.quote
        done = []
        for name in columns:
            kind = self._table.c[name].type.compile(dialect=engine.dialect)
            ddl = f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {kind} NULL"
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except SQLAlchemyError:
                with engine.connect() as conn:  # added meanwhile by another migrate?
                    if name in self._missing(conn)[1]:
                        raise
                continue
            done.append(f"added column {table}.{name}")
        for name in indexed:
            index = next(i for i in self._table.indexes if i.name == _index_name(table, name))
            with engine.begin() as conn:
                index.create(conn, checkfirst=True)
            done.append(f"created index {index.name} on {table} ({name})")
        return done

    def drop_schema(self) -> None:
        """``DROP TABLE IF EXISTS`` the sessions table."""
        try:
            self._table.metadata.drop_all(self._get_engine(), checkfirst=True)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        self._layout = None

    def put(self, record: SessionRecord) -> None:
        """Insert or replace a record (a :class:`StoredSession`'s ``last_seen`` and
        ``idp_sid`` too, where the table has those columns)."""
        values: dict[str, Any] = {
            "user_id": record.user_id,
            "status": SessionStatus(record.status).value,
            "expires_at": record.expires_at,
            "issued_at": record.issued_at,
            "data": _data_json(record),
        }
        table = self._table
        engine = self._get_engine()
        dialect = engine.dialect.name
        try:
            with engine.begin() as conn:
                if "last_seen" in self._columns(conn):
                    values["last_seen"] = getattr(record, "last_seen", None)
                if "idp_sid" in self._columns(conn):
                    values["idp_sid"] = getattr(record, "idp_sid", None)
                if dialect == "sqlite":
                    from sqlalchemy.dialects import sqlite

                    lite = sqlite.insert(table).values(session_id=record.session_id, **values)
                    conn.execute(
                        lite.on_conflict_do_update(index_elements=["session_id"], set_=values)
                    )
                elif dialect == "postgresql":
                    from sqlalchemy.dialects import postgresql

                    pg = postgresql.insert(table).values(session_id=record.session_id, **values)
                    conn.execute(
                        pg.on_conflict_do_update(index_elements=["session_id"], set_=values)
                    )
                else:
                    updated = conn.execute(
                        table.update()
                        .where(table.c.session_id == record.session_id)
                        .values(**values)
                    )
                    if updated.rowcount == 0:
                        conn.execute(table.insert().values(session_id=record.session_id, **values))
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, record.session_id) from None

    def delete(self, session_id: str) -> None:
        """Remove a record (no error when it does not exist)."""
        try:
            with self._get_engine().begin() as conn:
                conn.execute(self._table.delete().where(self._table.c.session_id == session_id))
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, session_id) from None

    def set_status(self, session_id: str, status: SessionStatus | str) -> bool:
        """Set a session's status; ``False`` when the session does not exist."""
        value = SessionStatus(status).value
        try:
            with self._get_engine().begin() as conn:
                result = conn.execute(
                    self._table.update()
                    .where(self._table.c.session_id == session_id)
                    .values(status=value)
                )
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, session_id) from None
        return bool(result.rowcount)

    def list_sessions(self, user_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Records ordered by session ID, optionally of one user; malformed rows are
        logged and skipped."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        table = self._table
        try:
            with self._get_engine().connect() as conn:
                layout = self._columns(conn)
                stmt = sa.select(table.c.session_id, *(table.c[c] for c in _COLUMNS if c in layout))
                if user_id is not None:
                    stmt = stmt.where(table.c.user_id == user_id)
                stmt = stmt.order_by(table.c.session_id).limit(limit)
                rows = conn.execute(stmt).mappings().all()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        records = []
        for row in rows:
            session_id = row["session_id"]
            if not isinstance(session_id, str):
                continue
            record = lookup_answer(stored_or_none(session_id, dict(row), source=_SOURCE))
            if record is not None:
                records.append(record)
        return records
