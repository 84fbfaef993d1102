"""Sessions in Django's own database, through the model of ``sessionmw.contrib.django``
(``backend = "django"`` or ``"django://ALIAS"``, SPEC sections 6 and 13).

The table is ``device_sessions`` with the SQL store's layout, created by the app's
migrations, so this store and :mod:`sessionmw.backends.sql` can share it. Queries go
through Django's connection ``ALIAS`` (``default`` unless the URL names another):
the sync methods use the ORM in the calling thread, the async twins use Django's
async ORM (``afirst``, ``aupdate``, ...; multi-statement work runs through
``sync_to_async`` in one transaction), each bounded by ``backend_timeout``.

Timeouts of the sync path are those of the connection: set them in ``DATABASES``
(``OPTIONS``: ``{"timeout": 2}`` for SQLite, ``{"connect_timeout": 2, "options":
"-c statement_timeout=2000"}`` for PostgreSQL). A failed query on a connection that
is not inside a transaction closes the connection when it is broken, so the next
call reconnects (Django itself only does that between requests, and the write-behind
flusher runs outside any request).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.db import Error as DjangoDBError
from django.db import IntegrityError, connections, transaction
from django.db.models import Case, F, FloatField, Q, Value, When

from sessionmw._log import scrub
from sessionmw.backends._errors import within
from sessionmw.errors import BackendUnavailable, ConfigError
from sessionmw.records import (
    SessionRecord,
    SessionStatus,
    StoredSession,
    latest_touches,
    lookup_answer,
    stored_or_none,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["APP", "DjangoBackend"]

#: The app that owns the model and its migrations.
APP = "sessionmw.contrib.django"
_LABEL = "sessionmw"
_SOURCE = "django"
_FIELDS = (
    "user_id",
    "status",
    "expires_at",
    "issued_at",
    "data",
    "last_seen",
    "idp_sid",
)
_NEW_COLUMNS = ("last_seen", "idp_sid")
_INDEXED = ("user_id", "idp_sid")
_ACTIVE = SessionStatus.ACTIVE.value
_REVOKED = SessionStatus.REVOKED.value


def _alias(url: str) -> str:
    if url.strip().lower() == "django":
        return "default"
    parts = urlsplit(url.strip())
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("backend", "expected django or django://ALIAS (a DATABASES key)")
    return parts.netloc or "default"


def _check_django(alias: str) -> None:
    """ConfigError naming ``backend`` unless Django is set up with the app installed and
    the connection alias configured (checked at start-up, not at the first request)."""
    from django.apps import apps
    from django.conf import settings
    from django.core.exceptions import AppRegistryNotReady

    if not settings.configured:
        raise ConfigError("backend", "the django store needs Django configured (settings)")
    try:
        installed = apps.is_installed(APP)
    except AppRegistryNotReady:
        raise ConfigError(
            "backend", "the django store needs Django set up first (django.setup())"
        ) from None
    if not installed:
        raise ConfigError("backend", f"the django store needs {APP!r} in INSTALLED_APPS")
    if alias not in connections.settings:
        raise ConfigError("backend", f"no database {alias!r} in settings.DATABASES")


def _data_json(record: SessionRecord) -> str | None:
    import json

    return json.dumps(dict(record.data), separators=(",", ":")) if record.data else None


def _row(session: SessionRecord) -> dict[str, Any]:
    return {
        "user_id": session.user_id,
        "status": SessionStatus(session.status).value,
        "expires_at": session.expires_at,
        "issued_at": session.issued_at,
        "data": _data_json(session),
        "last_seen": getattr(session, "last_seen", None),
        "idp_sid": getattr(session, "idp_sid", None),
    }


def _stored(row: dict[str, Any] | None) -> StoredSession | None:
    if row is None:
        return None
    session_id = row.pop("session_id")
    return stored_or_none(session_id, row, source=_SOURCE)


class DjangoBackend:
    """The ``device_sessions`` model through Django connection ``alias``.

    A :class:`~sessionmw.backends.Store`: the same lifecycle and management API as
    the SQL store. Build it with ``backend_from_url("django")`` once Django is set up
    (the middleware and ``sessions()`` do so at start-up).
    """

    def __init__(self, url: str = "django", *, timeout: float = 2.0) -> None:
        self.alias = _alias(url)
        _check_django(self.alias)
        from sessionmw.contrib.django.models import DeviceSession

        self.timeout = float(timeout)
        self.model = DeviceSession
        self.table_name: str = DeviceSession._meta.db_table

    def __repr__(self) -> str:
        return f"<DjangoBackend alias={self.alias} table={self.table_name}>"

    # -- plumbing ------------------------------------------------------------------

    @property
    def _objects(self) -> Any:
        return self.model.objects.using(self.alias)

    @property
    def _connection(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    def _recover(self) -> None:
        """After a failed query: drop the connection if it is broken (outside a
        transaction only: a transaction is its owner's to roll back)."""
        connection = self._connection
        if not connection.in_atomic_block:
            with contextlib.suppress(DjangoDBError):  # closing a dead one can fail too
                connection.close_if_unusable_or_obsolete()

    def _unavailable(self, exc: BaseException, *session_ids: str) -> BackendUnavailable:
        lines = str(exc).strip().splitlines()
        text = scrub(lines[0], *session_ids) if lines else ""
        message = f"Django database {self.alias!r} unavailable: {type(exc).__name__}"
        return BackendUnavailable(f"{message}: {text}" if text else message)

    def _fail(self, exc: BaseException, *session_ids: str) -> BackendUnavailable:
        self._recover()
        return self._unavailable(exc, *session_ids)

    async def _afail(self, exc: BaseException, *session_ids: str) -> BackendUnavailable:
        # In the thread that owns the async ORM's connection.
        await sync_to_async(self._recover, thread_sensitive=True)()
        return self._unavailable(exc, *session_ids)

    def _one(self, session_id: str) -> Any:
        return self._objects.filter(pk=session_id).values("session_id", *_FIELDS)

    def _user_sessions(self, user_id: str, now: float) -> Any:
        return (
            self._objects.filter(user_id=user_id, status=_ACTIVE)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .values("session_id", *_FIELDS)
            .order_by(F("issued_at").desc(nulls_last=True), "session_id")
        )

    @staticmethod
    def _listed(rows: list[dict[str, Any]], now: float) -> list[StoredSession]:
        found = []
        for row in rows:
            stored = _stored(row)
            if stored is not None and stored.active and not stored.expired(now):
                found.append(stored)
        return found

    # -- lookups -------------------------------------------------------------------

    def get(self, session_id: str) -> StoredSession | None:
        """The stored session, or ``None`` (unknown, or malformed: logged)."""
        try:
            row = self._one(session_id).first()
        except DjangoDBError as exc:
            raise self._fail(exc, session_id) from None
        return _stored(row)

    async def aget(self, session_id: str) -> StoredSession | None:
        try:
            row = await within(self._one(session_id).afirst(), self.timeout, "Django")
        except DjangoDBError as exc:
            raise await self._afail(exc, session_id) from None
        return _stored(row)

    def lookup(self, session_id: str) -> SessionRecord | None:
        return lookup_answer(self.get(session_id))

    async def alookup(self, session_id: str) -> SessionRecord | None:
        return lookup_answer(await self.aget(session_id))

    # -- lifecycle (SPEC section 11) -------------------------------------------------

    def create(self, session: StoredSession) -> None:
        """Insert a new session; ``ValueError`` when its ID is taken."""
        try:
            with transaction.atomic(using=self.alias):
                self._objects.create(session_id=session.session_id, **_row(session))
        except IntegrityError:
            raise ValueError("a session with this ID is already in the store") from None
        except DjangoDBError as exc:
            raise self._fail(exc, session.session_id) from None

    async def acreate(self, session: StoredSession) -> None:
        try:
            await within(
                self._objects.acreate(session_id=session.session_id, **_row(session)),
                self.timeout,
                "Django",
            )
        except IntegrityError:
            raise ValueError("a session with this ID is already in the store") from None
        except DjangoDBError as exc:
            raise await self._afail(exc, session.session_id) from None

    def list_user(self, user_id: str) -> list[StoredSession]:
        """The user's active, unexpired sessions, newest first (by the user_id index)."""
        now = time.time()
        try:
            rows = list(self._user_sessions(user_id, now))
        except DjangoDBError as exc:
            raise self._fail(exc) from None
        return self._listed(rows, now)

    def list_active(self, limit: int = 100) -> list[StoredSession]:
        """Every user's active, unexpired sessions, newest first, at most ``limit``
        (what ``manage.py sessionmw_sessions list`` shows without ``--user``)."""
        now = time.time()
        query = (
            self._objects.filter(status=_ACTIVE)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .values("session_id", *_FIELDS)
            .order_by(F("issued_at").desc(nulls_last=True), "session_id")
        )
        try:
            rows = list(query[:limit])
        except DjangoDBError as exc:
            raise self._fail(exc) from None
        return self._listed(rows, now)

    async def alist_user(self, user_id: str) -> list[StoredSession]:
        now = time.time()

        async def fetch() -> list[dict[str, Any]]:
            return [row async for row in self._user_sessions(user_id, now)]

        try:
            rows = await within(fetch(), self.timeout, "Django")
        except DjangoDBError as exc:
            raise await self._afail(exc) from None
        return self._listed(rows, now)

    def _revoke_sql(self, session_id: str) -> Any:
        return self._objects.filter(pk=session_id, status=_ACTIVE)

    def revoke(self, session_id: str) -> bool:
        """Mark the session revoked; ``True`` only if it was active (one ``UPDATE``)."""
        try:
            return bool(self._revoke_sql(session_id).update(status=_REVOKED) == 1)
        except DjangoDBError as exc:
            raise self._fail(exc, session_id) from None

    async def arevoke(self, session_id: str) -> bool:
        try:
            updated = await within(
                self._revoke_sql(session_id).aupdate(status=_REVOKED), self.timeout, "Django"
            )
        except DjangoDBError as exc:
            raise await self._afail(exc, session_id) from None
        return bool(updated == 1)

    def revoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        """Revoke the user's active, unexpired sessions except ``keep``, in one
        transaction (rows locked where the database can); the IDs it revoked, sorted."""
        now = time.time()
        chosen = self._objects.filter(user_id=user_id, status=_ACTIVE).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )
        if keep is not None:
            chosen = chosen.exclude(pk=keep)
        revoked = []
        try:
            with transaction.atomic(using=self.alias):
                ids = sorted(chosen.select_for_update().values_list("session_id", flat=True))
                for sid in ids:
                    if self._revoke_sql(sid).update(status=_REVOKED) == 1:
                        revoked.append(str(sid))
        except DjangoDBError as exc:
            raise self._fail(exc, *([keep] if keep else [])) from None
        return revoked

    async def arevoke_user(self, user_id: str, keep: str | None = None) -> list[str]:
        # Several statements in one transaction: the async ORM has no transactions,
        # so the sync method runs in the thread that owns the async ORM's connection.
        run = sync_to_async(self.revoke_user, thread_sensitive=True)
        revoked: list[str] = await within(run(user_id, keep), self.timeout, "Django")
        return revoked

    def ids_for_idp_sid(self, idp_sid: str) -> list[str]:
        """The IDs of the sessions created with this identity-provider session, sorted."""
        try:
            ids = self._objects.filter(idp_sid=idp_sid).order_by("session_id")
            return [str(sid) for sid in ids.values_list("session_id", flat=True)]
        except DjangoDBError as exc:
            raise self._fail(exc) from None

    async def aids_for_idp_sid(self, idp_sid: str) -> list[str]:
        query = self._objects.filter(idp_sid=idp_sid).order_by("session_id")

        async def fetch() -> list[str]:
            return [str(sid) async for sid in query.values_list("session_id", flat=True)]

        try:
            return await within(fetch(), self.timeout, "Django")
        except DjangoDBError as exc:
            raise await self._afail(exc) from None

    def touch_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Move ``last_seen`` forward (never back) for the sessions that exist: one
        ``UPDATE … SET last_seen = CASE session_id WHEN … END`` per chunk (sized to the
        database's bound-parameter limit); no row is created, no I/O when empty."""
        latest = list(latest_touches(items).items())
        if not latest:
            return
        limit = self._connection.features.max_query_params or 5000
        chunk = max(1, limit // 5 - 1)  # five parameters per session in the statement
        try:
            # Each chunk stands alone (it only moves times forward): no transaction.
            for start in range(0, len(latest), chunk):
                part = latest[start : start + chunk]
                seen = Case(
                    *(When(pk=sid, then=Value(value)) for sid, value in part),
                    output_field=FloatField(),
                )
                self._objects.filter(pk__in=[sid for sid, _ in part]).filter(
                    Q(last_seen__isnull=True) | Q(last_seen__lt=seen)
                ).update(last_seen=seen)
        except DjangoDBError as exc:
            raise self._fail(exc, *(sid for sid, _ in latest)) from None

    async def atouch_many(self, items: Sequence[tuple[str, float]]) -> None:
        run = sync_to_async(self.touch_many, thread_sensitive=True)
        await within(run(items), self.timeout, "Django")

    # -- management ------------------------------------------------------------------

    def _leaf(self) -> tuple[str, str]:
        from django.db.migrations.loader import MigrationLoader

        loader = MigrationLoader(None, ignore_no_migrations=True)
        (leaf,) = loader.graph.leaf_nodes(_LABEL)
        return (str(leaf[0]), str(leaf[1]))

    def _missing(self) -> tuple[bool, list[str], list[str], list[str]]:
        """(table exists, missing columns, missing indexed columns, unapplied
        migrations of the app)."""
        from django.db.migrations.recorder import MigrationRecorder

        connection = self._connection
        introspection = connection.introspection
        with connection.cursor() as cursor:
            exists = self.table_name in introspection.table_names(cursor)
            columns: set[str] = set()
            indexed: set[str] = set()
            if exists:
                description = introspection.get_table_description(cursor, self.table_name)
                columns = {column.name for column in description}
                constraints = introspection.get_constraints(cursor, self.table_name)
                indexed = {
                    c["columns"][0]
                    for c in constraints.values()
                    if c.get("index") and c.get("columns") and not c.get("primary_key")
                }
        recorder = MigrationRecorder(connection)
        applied = recorder.applied_migrations() if recorder.has_table() else {}
        leaf = self._leaf()
        unapplied = [] if leaf in applied else [f"{leaf[0]}.{leaf[1]}"]
        return (
            exists,
            [name for name in _NEW_COLUMNS if exists and name not in columns],
            [name for name in _INDEXED if exists and name not in indexed],
            unapplied,
        )

    def _describe(
        self, exists: bool, columns: list[str], indexed: list[str], unapplied: list[str]
    ) -> list[str]:
        table = self.table_name
        if not exists:
            return [f"table {table}"]
        return (
            [f"column {table}.{name}" for name in columns]
            + [f"index ix_{table}_{name} on {table} ({name})" for name in indexed]
            + [f"migration {name} (recorded as applied)" for name in unapplied]
        )

    def schema_missing(self) -> list[str]:
        """What :meth:`create_schema` would do: ``["table device_sessions"]`` when the
        table does not exist, else the columns and indexes an older table lacks and
        the app's migration when it is not recorded; ``[]`` when nothing is missing."""
        try:
            return self._describe(*self._missing())
        except DjangoDBError as exc:
            raise self._fail(exc) from None

    def create_schema(self) -> list[str]:
        """Apply the app's migrations on this connection (``migrate sessionmw``). A
        table made earlier by the SQL store is taken over: the columns and indexes of
        the current layout it lacks are added first, then the initial migration is
        recorded as applied (``--fake-initial``). Never drops anything; what it did."""
        from django.db.migrations.executor import MigrationExecutor

        try:
            exists, columns, indexed, unapplied = self._missing()
            wanted = self._describe(exists, columns, indexed, unapplied)
            if exists and (columns or indexed):
                with self._connection.schema_editor() as editor:
                    for name in columns:
                        editor.add_field(self.model, self.model._meta.get_field(name))
                    for index in self.model._meta.indexes:
                        if index.fields[0] in indexed:
                            editor.add_index(self.model, index)
            if unapplied:
                executor = MigrationExecutor(self._connection)
                targets = [self._leaf()]
                executor.migrate(targets, plan=executor.migration_plan(targets), fake_initial=True)
        except DjangoDBError as exc:
            raise self._fail(exc) from None
        return [f"created {what}" if what.startswith("table") else what for what in wanted]

    def put(self, record: SessionRecord) -> None:
        """Insert or replace a record."""
        try:
            self._objects.update_or_create(session_id=record.session_id, defaults=_row(record))
        except DjangoDBError as exc:
            raise self._fail(exc, record.session_id) from None

    def delete(self, session_id: str) -> None:
        """Remove a record (no error when it does not exist)."""
        try:
            self._objects.filter(pk=session_id).delete()
        except DjangoDBError as exc:
            raise self._fail(exc, session_id) from None

    def set_status(self, session_id: str, status: SessionStatus | str) -> bool:
        """Set a session's status; ``False`` when the session does not exist."""
        value = SessionStatus(status).value
        try:
            return bool(self._objects.filter(pk=session_id).update(status=value))
        except DjangoDBError as exc:
            raise self._fail(exc, session_id) from None

    def list_sessions(self, user_id: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Records ordered by session ID, optionally of one user; malformed rows are
        logged and skipped."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        query = self._objects.all()
        if user_id is not None:
            query = query.filter(user_id=user_id)
        try:
            rows = list(query.order_by("session_id").values("session_id", *_FIELDS)[:limit])
        except DjangoDBError as exc:
            raise self._fail(exc) from None
        records = []
        for row in rows:
            record = lookup_answer(_stored(row))
            if record is not None:
                records.append(record)
        return records

    def close(self) -> None:
        """Nothing: the connections are Django's (closed between requests as usual)."""
