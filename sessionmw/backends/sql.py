"""A SQL table of sessions, through SQLAlchemy 2 (``sqlite:///…``, ``postgresql://…``).

Layout (SPEC section 6)::

    session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, status TEXT NOT NULL,
    expires_at DOUBLE/REAL NULL, issued_at DOUBLE/REAL NULL, data TEXT NULL (JSON)

The table is ``device_sessions`` unless the URL names another with ``?table=NAME``
(the parameter is removed before the URL reaches SQLAlchemy). The engine is built on
first use, so a backend constructed before a pre-forking server forks is safe; a
child process drops (without closing) the pooled connections it inherited.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import re
import threading
import weakref
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from sessionmw.backends._errors import scrub, within
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import SessionRecord, SessionStatus, record_or_none

__all__ = ["DEFAULT_TABLE", "SQLBackend"]

DEFAULT_TABLE = "device_sessions"
_SOURCE = "sql"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COLUMNS = ("user_id", "status", "expires_at", "issued_at", "data")


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
    )


def _normalise_url(url: URL) -> URL:
    """``postgres://`` is not a SQLAlchemy dialect name; psycopg 3 when psycopg2 is absent."""
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql" and not driver and importlib.util.find_spec("psycopg2") is None:
        driver = "psycopg"
    drivername = f"{backend}+{driver}" if driver else backend
    return url.set(drivername=drivername) if drivername != url.drivername else url


_INSTANCES: weakref.WeakSet[SQLBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_INSTANCES):
        backend._reset_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        self._table = _table(table)
        self._lookup_sql = sa.select(*(self._table.c[name] for name in _COLUMNS)).where(
            self._table.c.session_id == sa.bindparam("sid")
        )
        self._given_engine = engine
        self._engine: Engine | None = engine
        self._pid = os.getpid()
        self._reset_locks()
        _INSTANCES.add(self)

    def _reset_locks(self) -> None:
        # Also run in a forked child: a lock held by a parent thread would never be freed.
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_threads = 0

    def __repr__(self) -> str:
        url = self._url.render_as_string(hide_password=True)
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

    def _unavailable(self, exc: BaseException, session_id: str = "") -> BackendUnavailable:
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        lines = str(detail).strip().splitlines()
        text = scrub(lines[0], session_id) if lines else ""
        message = f"SQL backend unavailable: {type(detail).__name__}"
        return BackendUnavailable(f"{message}: {text}" if text else message)

    # -- lookups -----------------------------------------------------------------

    def lookup(self, session_id: str) -> SessionRecord | None:
        try:
            with self._get_engine().connect() as conn:
                row = conn.execute(self._lookup_sql, {"sid": session_id}).mappings().first()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc, session_id) from None
        if row is None:
            return None
        return record_or_none(session_id, dict(row), source=_SOURCE)

    async def alookup(self, session_id: str) -> SessionRecord | None:
        """Run :meth:`lookup` in a worker thread, bounded by ``timeout``."""
        return await within(
            asyncio.to_thread(self._lookup_in_thread, session_id), self.timeout, "SQL"
        )

    def _lookup_in_thread(self, session_id: str) -> SessionRecord | None:
        with self._idle:
            self._in_threads += 1
        try:
            return self.lookup(session_id)
        finally:
            with self._idle:
                self._in_threads -= 1
                self._idle.notify_all()

    # -- management (CLI, demo) -------------------------------------------------

    def create_schema(self) -> None:
        """``CREATE TABLE IF NOT EXISTS`` the sessions table."""
        try:
            self._table.metadata.create_all(self._get_engine(), checkfirst=True)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def drop_schema(self) -> None:
        """``DROP TABLE IF EXISTS`` the sessions table."""
        try:
            self._table.metadata.drop_all(self._get_engine(), checkfirst=True)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def put(self, record: SessionRecord) -> None:
        """Insert or replace a record."""
        values: dict[str, Any] = {
            "user_id": record.user_id,
            "status": SessionStatus(record.status).value,
            "expires_at": record.expires_at,
            "issued_at": record.issued_at,
            "data": json.dumps(dict(record.data), separators=(",", ":")) if record.data else None,
        }
        table = self._table
        engine = self._get_engine()
        dialect = engine.dialect.name
        try:
            with engine.begin() as conn:
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
        stmt = sa.select(table.c.session_id, *(table.c[name] for name in _COLUMNS))
        if user_id is not None:
            stmt = stmt.where(table.c.user_id == user_id)
        stmt = stmt.order_by(table.c.session_id).limit(limit)
        try:
            with self._get_engine().connect() as conn:
                rows = conn.execute(stmt).mappings().all()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        records = []
        for row in rows:
            session_id = row["session_id"]
            if not isinstance(session_id, str):
                continue
            record = record_or_none(session_id, dict(row), source=_SOURCE)
            if record is not None:
                records.append(record)
        return records
