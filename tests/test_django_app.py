"""``sessionmw.contrib.django`` as an installed app (SPEC sections 6 and 13): the model's
migration on SQLite and PostgreSQL (sharing the SQL store's table), ``backend =
"django"`` through the whole SPEC section 7 table on Django's sync and async stacks,
start-up errors, the admin (changelist, filters, search, the Revoke action) and the
``sessionmw_sessions`` management command.

The database is the test process's SQLite file (tests/django_settings.py), migrated
once; each test starts from empty ``device_sessions`` and user tables.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import AsyncClient, Client, override_settings

from sessionmw import ConfigError, SessionRecord, SessionStatus, StoredSession
from sessionmw._log import hash_id
from sessionmw.backends import Store, backend_from_url
from sessionmw.backends.django import DjangoBackend
from sessionmw.backends.sql import SQLBackend
from sessionmw.contrib.django import sessions
from tests import django_settings
from tests.servers import clean_env
from tests.spec_cases import CASES, RAW_CASES, Case, Result, seeded_backend, settings_for
from tests.test_backend_contract import django_alias
from tests.test_spec_table import assert_matches

django_settings.setup()

from django.contrib.auth.models import User  # noqa: E402 - needs the settings above

pytestmark = pytest.mark.usefixtures("fresh_gates", "database")

HEADER = "X-Device-Session-ID"
CHANGELIST = "/admin/sessionmw/devicesession/"
_MIGRATED: list[bool] = []


@pytest.fixture
def database() -> Iterator[None]:
    """Every app's tables in the test SQLite file (once per process); empty session
    and user tables around each test."""
    if not _MIGRATED:
        call_command("migrate", verbosity=0)
        _MIGRATED.append(True)
    DjangoBackend().model.objects.all().delete()
    User.objects.all().delete()
    yield
    DjangoBackend().model.objects.all().delete()
    User.objects.all().delete()


def refused_alias() -> str:
    """A connection alias whose PostgreSQL refuses every connection."""
    from tests.conftest import free_port

    return django_alias(
        "refused_app",
        ENGINE="django.db.backends.postgresql",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        NAME="t",
        USER="postgres",
    )


def stored(
    session_id: str,
    user_id: str = "alice",
    *,
    status: SessionStatus = SessionStatus.ACTIVE,
    issued_at: float | None = None,
    idp_sid: str | None = None,
) -> StoredSession:
    now = time.time()
    issued = now - 60 if issued_at is None else issued_at
    return StoredSession(
        session_id, user_id, status, now + 3600, issued, {}, last_seen=issued, idp_sid=idp_sid
    )


# -- the migration -------------------------------------------------------------------


def _layout(alias: str) -> tuple[dict[str, str], set[str]]:
    """(column -> introspected type, first columns of the non-primary indexes)."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        description = connection.introspection.get_table_description(cursor, "device_sessions")
        constraints = connection.introspection.get_constraints(cursor, "device_sessions")
    columns = {
        col.name: connection.introspection.get_field_type(col.type_code, col) for col in description
    }
    indexed = {
        c["columns"][0]
        for c in constraints.values()
        if c["index"] and c["columns"] and not c["primary_key"] and not c["unique"]
    }
    return columns, indexed


def _check_shared_table(alias: str, sql_url: str) -> None:
    """The migrated table has the SQL store's layout: the SQL store finds nothing
    missing, and what one store writes the other reads."""
    columns, indexed = _layout(alias)
    assert columns == {
        "session_id": "TextField",
        "user_id": "TextField",
        "status": "TextField",
        "expires_at": "FloatField",
        "issued_at": "FloatField",
        "data": "TextField",
        "last_seen": "FloatField",
        "idp_sid": "TextField",
    }
    assert {"user_id", "idp_sid"} <= indexed
    sql = SQLBackend(sql_url)
    django = DjangoBackend(f"django://{alias}")
    try:
        assert sql.schema_missing() == []
        assert django.schema_missing() == []
        sql.create(stored("from-sql", idp_sid="idp-1"))
        django.create(stored("from-django", issued_at=time.time() - 10))
        assert django.get("from-sql") == sql.get("from-sql")
        assert sql.get("from-django") == django.get("from-django")
        assert [s.session_id for s in sql.list_user("alice")] == ["from-django", "from-sql"]
        assert django.ids_for_idp_sid("idp-1") == ["from-sql"]
    finally:
        sql.close()


def test_migration_applies_on_sqlite(tmp_path: Path) -> None:
    """``migrate sessionmw`` on a fresh SQLite database creates ``device_sessions`` with
    the SQL store's columns and indexes; both stores share it."""
    path = tmp_path / "fresh.sqlite3"
    alias = django_alias(
        f"fresh_{uuid.uuid4().hex[:8]}", ENGINE="django.db.backends.sqlite3", NAME=str(path)
    )
    call_command("migrate", "sessionmw", database=alias, verbosity=0)
    try:
        _check_shared_table(alias, f"sqlite:///{path}")
    finally:
        connections[alias].close()


def test_migration_matches_the_model() -> None:
    """The hand-written migration is what makemigrations would write (no change)."""
    out = io.StringIO()
    call_command("makemigrations", "sessionmw", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_migration_applies_on_postgresql(postgres_url: str) -> None:
    """The same on PostgreSQL, in a throwaway database (dropped afterwards)."""
    import psycopg

    name = f"sessionmw_django_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    alias = django_alias(
        name,
        ENGINE="django.db.backends.postgresql",
        HOST=parts.hostname or "127.0.0.1",
        PORT=str(parts.port or 5432),
        NAME=name,
        USER=parts.username or "postgres",
        PASSWORD=parts.password or "",
    )
    try:
        call_command("migrate", "sessionmw", database=alias, verbosity=0)
        _check_shared_table(alias, parts._replace(path=f"/{name}").geturl())
    finally:
        connections[alias].close()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_create_schema_takes_over_an_older_sql_table(tmp_path: Path) -> None:
    """A table of the older layout, made before the app was installed: the django
    store lists what is missing, adds it and records the migration; ``migrate`` then
    has nothing left to do and the old rows still read."""
    path = tmp_path / "old.sqlite3"
    import sqlite3

    with sqlite3.connect(path) as raw:
        raw.execute(
            "CREATE TABLE device_sessions (session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,"
            " status TEXT NOT NULL, expires_at REAL, issued_at REAL, data TEXT)"
        )
        raw.execute("INSERT INTO device_sessions VALUES ('old', 'bob', 'active', NULL, 5, NULL)")
    raw.close()
    alias = django_alias(
        f"old_{uuid.uuid4().hex[:8]}", ENGINE="django.db.backends.sqlite3", NAME=str(path)
    )
    store = DjangoBackend(f"django://{alias}")
    try:
        missing = store.schema_missing()
        assert missing == [
            "column device_sessions.last_seen",
            "column device_sessions.idp_sid",
            "index ix_device_sessions_user_id on device_sessions (user_id)",
            "index ix_device_sessions_idp_sid on device_sessions (idp_sid)",
            "migration sessionmw.0001_initial (recorded as applied)",
        ]
        assert store.create_schema() == missing
        assert store.schema_missing() == []
        assert store.create_schema() == []
        out = io.StringIO()
        call_command("migrate", "sessionmw", database=alias, stdout=out)
        assert "No migrations to apply" in out.getvalue()
        assert store.lookup("old") == SessionRecord("old", "bob", SessionStatus.ACTIVE, None, 5.0)
        _check_shared_table(alias, f"sqlite:///{path}")
    finally:
        connections[alias].close()


# -- start-up errors -------------------------------------------------------------------


def test_store_is_a_store() -> None:
    store = backend_from_url("django")
    assert isinstance(store, Store)
    assert isinstance(store, DjangoBackend)
    assert store.alias == "default"


@pytest.mark.parametrize("url", ["django://nope", "django://default/x", "django://default?a=1"])
def test_unknown_alias_or_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_url(url)
    assert info.value.key == "backend"


def test_middleware_with_a_bad_django_backend_fails_at_startup() -> None:
    """Building Django's handler raises ConfigError naming ``backend``."""
    with (
        override_settings(SESSIONMW={"backend": "django://nope"}),
        pytest.raises(ConfigError) as info,
    ):
        WSGIHandler()
    assert info.value.key == "backend"
    assert "nope" in str(info.value)


def test_app_not_installed_is_a_config_error() -> None:
    installed = [
        app
        for app in django_settings.TEST_SETTINGS["INSTALLED_APPS"]
        if app != "sessionmw.contrib.django"
    ]
    with override_settings(INSTALLED_APPS=installed), pytest.raises(ConfigError) as info:
        backend_from_url("django")
    assert info.value.key == "backend"
    assert "INSTALLED_APPS" in str(info.value)


def test_django_not_configured_is_a_config_error() -> None:
    """Outside a configured Django process the store refuses to start."""
    code = (
        "from sessionmw.backends import backend_from_url\n"
        "from sessionmw import ConfigError\n"
        "try:\n    backend_from_url('django')\n"
        "except ConfigError as exc:\n    print(exc.key, exc)\n"
    )
    env = clean_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("backend backend: the django store needs Django configured")


# -- the SPEC section 7 table with backend = "django" ----------------------------------


def _seed() -> None:
    store = DjangoBackend()
    seeded = seeded_backend()
    for record in seeded.list_sessions():
        store.put(record)


def _sync(case: Case) -> Result:
    response = Client().generic(
        case.method, case.path, **django_settings.join_headers(case.headers)
    )
    return Result(
        response.status_code, response.content, {k.lower(): v for k, v in response.headers.items()}
    )


def _async(case: Case) -> Result:
    async def go() -> Any:
        return await AsyncClient().request(
            **django_settings.asgi_scope(case.method, case.path, case.headers)
        )

    response = asyncio.run(go())
    return Result(
        response.status_code, response.content, {k.lower(): v for k, v in response.headers.items()}
    )


@pytest.mark.parametrize("stack", ["sync", "async"])
@pytest.mark.parametrize("case", CASES + RAW_CASES, ids=lambda c: c.name)
def test_spec_table_on_the_django_store(
    stack: str, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every SPEC section 7 situation, with the sessions in Django's database (the
    store down: a connection alias whose database refuses connections)."""
    _seed()
    backend = f"django://{refused_alias()}" if case.down else "django"
    with override_settings(SESSIONMW=settings_for(backend)):
        result = (_sync if stack == "sync" else _async)(case)
    assert_matches(case, result)


# -- the admin -------------------------------------------------------------------------


@pytest.fixture
def admin_client() -> Iterator[Client]:
    """A superuser's client; the admin exempt from the device-session check (a
    browser app), the sessions in Django's database."""
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    with override_settings(SESSIONMW={"backend": "django", "exempt_paths": ["/admin/"]}):
        yield client


def test_admin_changelist_filters_and_search(admin_client: Client) -> None:
    """The changelist shows each session by its hash (never the raw ID), filters by
    status and user, searches by user, and offers Revoke but not delete."""
    store = DjangoBackend()
    store.create(stored("alice-phone-secret-id"))
    store.create(stored("alice-laptop-secret-id", idp_sid="idp-9"))
    store.create(stored("bob-secret-id", "bob"))
    store.revoke("alice-laptop-secret-id")

    def shown(query: str = "") -> set[str]:
        response = admin_client.get(CHANGELIST + query)
        assert response.status_code == 200
        page = response.content.decode()
        for sid in ("alice-phone-secret-id", "alice-laptop-secret-id", "bob-secret-id"):
            # Only as the action checkbox's value, never as text or in a link.
            assert f">{sid}<" not in page
            assert f"/{sid}/" not in page
        return {
            sid
            for sid in ("alice-phone-secret-id", "alice-laptop-secret-id", "bob-secret-id")
            if hash_id(sid) in page
        }

    page = admin_client.get(CHANGELIST).content.decode()
    assert "revoke_sessions" in page
    assert "delete_selected" not in page
    assert shown() == {"alice-phone-secret-id", "alice-laptop-secret-id", "bob-secret-id"}
    assert shown("?status__exact=revoked") == {"alice-laptop-secret-id"}
    assert shown("?user_id=bob") == {"bob-secret-id"}
    assert shown("?q=alice") == {"alice-phone-secret-id", "alice-laptop-secret-id"}
    assert shown("?q=idp-9") == {"alice-laptop-secret-id"}
    assert shown("?q=ali") == set()  # exact user IDs only
    assert admin_client.get(CHANGELIST + "add/").status_code == 403


REVOKE = {"action": "revoke_sessions"}
#: The confirmation page's own markup (its "Yes, revoke" form).
CONFIRM_MARK = '<input type="hidden" name="post" value="yes">'


def _without_values(page: str) -> str:
    """The page without its attributes' values (where the action's hidden inputs and
    the changelist's checkboxes carry the raw IDs, as Django's admin needs them)."""
    return re.sub(r'value="[^"]*"', "", page)


def test_admin_revoke_asks_for_confirmation_first(admin_client: Client) -> None:
    """The action's first POST answers with a confirmation page: the selected sessions
    by hash (never the raw ID as text), user and status, their count, the hidden
    inputs that confirm, a CSRF token and a way back; nothing is revoked yet."""
    store = DjangoBackend()
    store.create(stored("alice-secret-sid"))
    store.create(stored("bob-secret-sid", "bob"))
    store.create(stored("carol-secret-sid", "carol"))
    store.revoke("bob-secret-sid")
    gate = sessions().gate
    assert gate.check("alice-secret-sid") == store.get("alice-secret-sid").record()  # type: ignore[union-attr]
    selected = ["alice-secret-sid", "bob-secret-sid"]
    response = admin_client.post(CHANGELIST, {**REVOKE, "_selected_action": selected})
    assert response.status_code == 200
    page = response.content.decode()
    assert CONFIRM_MARK in page
    text = _without_values(page)
    assert hash_id("alice-secret-sid") in text
    assert hash_id("bob-secret-sid") in text
    assert hash_id("carol-secret-sid") not in text  # not selected
    for sid in ("alice-secret-sid", "bob-secret-sid", "carol-secret-sid"):
        assert sid not in text
    rows = re.findall(r"<tr><td><code>(\w+)</code></td><td>(\w+)</td><td>(\w+)</td></tr>", page)
    assert sorted(rows) == sorted(
        [
            (hash_id("alice-secret-sid"), "alice", "active"),
            (hash_id("bob-secret-sid"), "bob", "revoked"),
        ]
    )
    assert "revoke the 2 selected sessions" in page
    assert "(1 active)" in page
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    assert sorted(v for n, v in hidden if n == "_selected_action") == selected
    assert ("action", "revoke_sessions") in hidden
    assert ("post", "yes") in hidden
    assert 'name="csrfmiddlewaretoken"' in page
    assert f'href="{CHANGELIST}" class="button cancel-link"' in page
    assert "<title>Revoke device sessions" in page
    # Nothing revoked, nothing pushed, the cache still holds the session as valid.
    assert store.get("alice-secret-sid").status is SessionStatus.ACTIVE  # type: ignore[union-attr]
    assert gate.events_applied == {}
    assert gate.hit("alice-secret-sid") is not None


def test_admin_revoke_action_goes_through_sessions(admin_client: Client) -> None:
    """Confirmed (``post=yes``), the Revoke action revokes in the store and pushes the
    events: the gate's cache, which held the session as valid, refuses it at once."""
    store = DjangoBackend()
    store.create(stored("victim"))
    store.create(stored("bystander"))
    gate = sessions().gate
    assert gate.check("victim") == store.get("victim").record()  # type: ignore[union-attr]
    assert gate.hit("victim") is not None  # cached as valid
    confirm = admin_client.post(CHANGELIST, {**REVOKE, "_selected_action": ["victim"]})
    assert confirm.status_code == 200
    assert hash_id("victim") in confirm.content.decode()
    assert gate.events_applied == {}
    response = admin_client.post(
        CHANGELIST, {**REVOKE, "_selected_action": ["victim"], "post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert "Revoked 1 session(s)" in response.content.decode()
    assert store.get("victim").status is SessionStatus.REVOKED  # type: ignore[union-attr]
    assert gate.events_applied == {"session_revoked": 1}
    assert gate.hit("victim") is None
    answer = gate.check("victim")
    assert getattr(answer, "code", None) == "invalid_session"
    assert store.get("bystander").status is SessionStatus.ACTIVE  # type: ignore[union-attr]


def test_admin_revoke_pushes_the_event_of_an_already_revoked_session(
    admin_client: Client,
) -> None:
    """A session revoked in the store whose event never went out (a bus outage, or a
    write straight to the table): selecting it again pushes the event, so a cache
    still holding it as valid refuses it."""
    store = DjangoBackend()
    store.create(stored("half-done"))
    gate = sessions().gate
    assert gate.check("half-done") == store.get("half-done").record()  # type: ignore[union-attr]
    assert store.revoke("half-done") is True  # in the store only: no event
    assert gate.hit("half-done") is not None  # still cached as valid
    response = admin_client.post(
        CHANGELIST, {**REVOKE, "_selected_action": ["half-done"], "post": "yes"}, follow=True
    )
    assert gate.events_applied == {"session_revoked": 1}
    assert gate.hit("half-done") is None
    assert "Revoked 0 session(s); 1 were not active" in response.content.decode()
    assert getattr(gate.check("half-done"), "code", None) == "invalid_session"


def test_admin_never_deletes_a_session(admin_client: Client) -> None:
    """Deleting a row would push no event: the delete page is refused to a superuser
    too (GET and POST), and the row stays."""
    from django.contrib import admin
    from django.test import RequestFactory

    from sessionmw.contrib.django.models import DeviceSession

    store = DjangoBackend()
    store.create(stored("kept-row"))
    url = f"{CHANGELIST}kept-row/delete/"
    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert store.get("kept-row") is not None
    request = RequestFactory().get(CHANGELIST)
    request.user = User.objects.get(username="root")
    model_admin = admin.site._registry[DeviceSession]
    assert model_admin.has_delete_permission(request) is False
    assert model_admin.has_delete_permission(request, DeviceSession.objects.get()) is False


def test_admin_revoke_needs_the_change_permission() -> None:
    """A staff user with only the view permission lists sessions but cannot revoke."""
    from django.contrib.auth.models import Permission

    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_devicesession"))
    DjangoBackend().create(stored("kept"))
    client = Client()
    client.force_login(user)
    with override_settings(SESSIONMW={"backend": "django", "exempt_paths": ["/admin/"]}):
        page = client.get(CHANGELIST)
        assert page.status_code == 200
        assert hash_id("kept") in page.content.decode()
        assert "revoke_sessions" not in page.content.decode()
        for form in ({}, {"post": "yes"}):  # neither the confirmation page nor the revoke
            answer = client.post(CHANGELIST, {**REVOKE, "_selected_action": ["kept"], **form})
            assert answer.status_code == 200  # the changelist again: no such action
            assert CONFIRM_MARK not in answer.content.decode()
    assert DjangoBackend().get("kept").status is SessionStatus.ACTIVE  # type: ignore[union-attr]
    assert sessions().gate.events_applied == {}


# -- the management command ------------------------------------------------------------


def _command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("sessionmw_sessions", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def django_store() -> Iterator[DjangoBackend]:
    with override_settings(SESSIONMW={"backend": "django"}):
        yield DjangoBackend()


def test_command_list(django_store: DjangoBackend) -> None:
    """``list`` prints active, unexpired sessions newest first; ``--user`` narrows it,
    ``--json`` gives one object per line, ``--limit`` bounds it."""
    now = time.time()
    django_store.create(stored("a-old", issued_at=now - 100))
    django_store.create(stored("a-new", issued_at=now - 10, idp_sid="i"))
    django_store.create(stored("b-1", "bob", issued_at=now - 50))
    django_store.create(stored("a-gone", issued_at=now - 5))
    django_store.revoke("a-gone")
    out, err = _command("list")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["a-new", "b-1", "a-old"]
    assert err.strip() == "3 active session(s)"
    out, _ = _command("list", "--user", "alice", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["session_id"] for r in rows] == ["a-new", "a-old"]
    assert rows[0]["idp_sid"] == "i"
    assert rows[0]["user_id"] == "alice"
    out, _ = _command("list", "--limit", "1")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["a-new"]


def test_command_revoke(django_store: DjangoBackend) -> None:
    """``revoke --session`` and ``--user`` go through Sessions (events applied to this
    process's gate); messages name sessions by hash only."""
    for sid, user in (("s-1", "alice"), ("s-2", "alice"), ("s-3", "bob")):
        django_store.create(stored(sid, user))
    gate = sessions().gate
    out, _ = _command("revoke", "--session", "s-1")
    assert out.strip() == f"revoked session {hash_id('s-1')}; every worker was told"
    assert "s-1" not in out
    out, _ = _command("revoke", "--session", "s-1")
    assert "was not active" in out
    out, _ = _command("revoke", "--user", "alice")
    assert out.strip() == "revoked 1 session(s) of user alice; every worker was told"
    assert gate.events_applied == {"session_revoked": 3, "user_sessions_revoked": 1}
    statuses = {sid: django_store.get(sid).status.value for sid in ("s-1", "s-2", "s-3")}  # type: ignore[union-attr]
    assert statuses == {"s-1": "revoked", "s-2": "revoked", "s-3": "active"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required"),
        (("revoke",), "one of the arguments --session --user is required"),
        (("revoke", "--session", "a", "--user", "b"), "not allowed with argument"),
        (("list", "--limit", "0"), "expected a positive integer"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_command_bad_arguments(
    django_store: DjangoBackend, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(CommandError) as info:
        _command(*args)
    assert message in str(info.value)


def test_command_unknown_session_and_unavailable_store() -> None:
    """An unknown session: exit code 1, named by hash; the store down: exit code 3."""
    with override_settings(SESSIONMW={"backend": "django"}), pytest.raises(CommandError) as info:
        _command("revoke", "--session", "no-such-session")
    assert info.value.returncode == 1
    assert hash_id("no-such-session") in str(info.value)
    assert "no-such-session" not in str(info.value)
    with (
        override_settings(SESSIONMW={"backend": f"django://{refused_alias()}"}),
        pytest.raises(CommandError) as info,
    ):
        _command("revoke", "--user", "alice")
    assert info.value.returncode == 3
