"""The ``sessionmw`` command line.

* ``sessionmw demo``: an example app on an embedded SQLite store, with ready-to-paste
  ``curl`` commands;
* ``sessionmw revoke``: sign and post an invalidation event to a hook, or add it to
  the Redis stream;
* ``sessionmw sessions create|list|revoke|migrate``: manage sessions in a SQL or Redis
  store (``migrate`` creates the schema; it never drops anything).

Exit codes: 0 success, 1 failure (refused by the hook, store or service unreachable,
session not found), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs, urlsplit, urlunsplit

from sessionmw._version import __version__
from sessionmw.errors import BackendUnavailable, BusUnavailable, ConfigError
from sessionmw.events import Event, Flush, SessionRevoked, UserSessionsRevoked, to_json
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.settings import Settings, redact_url, scheme_kind

if TYPE_CHECKING:
    from sessionmw.backends import Store

DEFAULT_STREAM = Settings.stream
DEFAULT_HOOK_PATH = Settings.invalidation_path
SECRET_ENV = "SESSIONMW_INVALIDATION_SECRET"  # noqa: S105 - a variable name


class CommandError(Exception):
    """A failure to report on stderr with exit code 1."""


def _fail(message: str) -> NoReturn:
    raise CommandError(message)


# -- revoke --------------------------------------------------------------------------


def _event(args: argparse.Namespace) -> Event:
    if args.session is not None:
        return SessionRevoked(args.session)
    if args.user is not None:
        return UserSessionsRevoked(args.user, args.before)
    return Flush()


def _hook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--hook must be an http(s) URL, got {url!r}")
    if parts.path in ("", "/"):
        # A bare origin: the hook is at the default invalidation_path.
        parts = parts._replace(path=DEFAULT_HOOK_PATH)
    return urlunsplit(parts)


def _post_hook(url: str, keys: Sequence[str], event: Event, timeout: float) -> dict[str, Any]:
    from sessionmw.signing import signed_request

    headers, body = signed_request(keys, [to_json(event)])
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        hint = ""
        if exc.code == 401:
            hint = " (is --secret the app's invalidation_secret, or --signing-key the private"
            hint += " half of one of its invalidation_public_key?)"
        _fail(f"the hook answered {exc.code} {detail}{hint}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        _fail(f"cannot reach the hook at {url}: {reason}")
    except ValueError:
        _fail("the hook answered something that is not JSON")


def _publish(bus_url: str, stream: str, event: Event, timeout: float) -> str:
    from sessionmw.bus import publish

    try:
        ids = publish(bus_url, [event], stream=stream, timeout=timeout)
    except ImportError as exc:  # the bus's driver is not installed
        _fail(str(exc))
    except BusUnavailable as exc:
        where = "" if bus_url.startswith("postgres") else f"add to stream {stream!r} at "
        _fail(f"cannot {where or 'publish to '}{redact_url(bus_url)}: {exc}")
    return ids[0] if ids else ""


def _signing_key(value: str) -> str:
    """A validated ``whsk_`` key; ``-`` reads it from stdin (kept out of ``ps``)."""
    from sessionmw.signing import public_key_of

    key = sys.stdin.readline().strip() if value == "-" else value
    if not key.startswith("whsk_"):
        raise ValueError("--signing-key must be a whsk_ key (python -m sessionmw.signing)")
    try:
        public_key_of(key)
    except ImportError as exc:
        _fail(str(exc))
    except ValueError as exc:
        raise ValueError(f"--signing-key: {exc}") from None
    return key


def cmd_revoke(args: argparse.Namespace) -> int:
    event = _event(args)
    if args.bus is not None:
        try:
            kind = scheme_kind("bus", args.bus)
        except ConfigError:
            kind = None
        if kind not in ("redis", "postgres"):
            raise ValueError(
                f"--bus must be a postgresql:// or redis:// URL, got {redact_url(args.bus)!r}"
            )
        entry = _publish(args.bus, args.stream, event, args.timeout)
        if kind == "postgres":  # a row of the events table, its id as the entry
            print(json.dumps({"entry": entry, "event": event.type}))
        else:
            print(json.dumps({"stream": args.stream, "entry": entry, "event": event.type}))
        return 0
    secret = args.secret
    if secret is None and args.signing_key is None:
        secret = os.environ.get(SECRET_ENV, "").split(",")[0].strip()
    if not secret and not args.signing_key:
        raise ValueError(
            f"--hook needs --secret or --signing-key (or {SECRET_ENV} in the environment)"
        )
    keys: list[str] = []
    if secret:
        Settings(invalidation_secret=(secret,))  # validates the secret's format
        keys.append(secret)
    if args.signing_key:
        keys.append(_signing_key(args.signing_key))
    answer = _post_hook(_hook_url(args.hook), keys, event, args.timeout)
    print(json.dumps(answer))
    return 0


# -- sessions -----------------------------------------------------------------------------


def _store(url: str) -> Store:
    """The writable store ``url`` names. A missing driver is a usage error (exit 2)
    reported in one line naming the extra to install."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("memory", "http", "https"):
        raise ValueError(f"--backend must be a SQL or Redis URL ({scheme}:// has no sessions)")
    Settings(backend=url)  # validates the scheme
    from sessionmw.backends import Store, backend_from_url

    try:
        store = backend_from_url(url)
    except ImportError as exc:
        raise ConfigError("backend", " ".join(str(exc).split())) from None
    if not isinstance(store, Store):
        raise ValueError(f"--backend {scheme}:// cannot be managed from here")
    return store


def _named_table(url: str) -> bool:
    """Whether a SQL URL chooses its table with ``?table=``."""
    return "table" in parse_qs(urlsplit(url).query, keep_blank_values=True)


def _ensure_schema(store: Store, url: str, create: bool) -> None:
    """Create the default table on first use; a table named with ``?table=`` is only
    created when asked (``--create-schema``): a typo must not make a new table."""
    missing = store.schema_missing()
    if not missing:
        return
    if _named_table(url) and not create:
        migrate = f"sessionmw sessions migrate --backend {shlex.quote(redact_url(url))}"
        raise ValueError(
            f"{', '.join(missing)} does not exist: run `{migrate}` first, or pass --create-schema"
        )
    for done in store.create_schema():
        print(f"sessionmw: {done}", file=sys.stderr)


def _record_json(record: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": record.session_id,
        "user_id": record.user_id,
        "status": record.status.value,
        "expires_at": record.expires_at,
        "issued_at": record.issued_at,
        "data": dict(record.data),
    }


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def cmd_sessions_create(args: argparse.Namespace) -> int:
    store = _store(args.backend)
    session_id = args.session_id or secrets.token_urlsafe(24)
    from sessionmw.gate import _VALID_ID

    if not _VALID_ID(session_id):
        raise ValueError("--session-id must be 1-256 characters of A-Z a-z 0-9 . _ ~ + / = -")
    data = json.loads(args.data) if args.data else {}
    if not isinstance(data, dict):
        raise ValueError("--data must be a JSON object")
    now = time.time()
    expires_at = None if args.ttl == 0 else now + args.ttl
    record = SessionRecord(session_id, args.user, SessionStatus.ACTIVE, expires_at, now, data)
    try:
        _ensure_schema(store, args.backend, args.create_schema)
        store.put(record)
    finally:
        store.close()
    print(session_id)
    return 0


def cmd_sessions_migrate(args: argparse.Namespace) -> int:
    store = _store(args.backend)
    try:
        done = store.create_schema()
    finally:
        store.close()
    for line in done:
        print(line)
    if not done:
        print("nothing to do: the schema is up to date")
    return 0


def cmd_sessions_list(args: argparse.Namespace) -> int:
    store = _store(args.backend)
    try:
        records = store.list_sessions(user_id=args.user, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps([_record_json(record) for record in records], indent=2))
        return 0
    if not records:
        print("no sessions", file=sys.stderr)
        return 0
    rows = [("SESSION", "USER", "STATUS", "EXPIRES", "ISSUED")]
    rows += [
        (r.session_id, r.user_id, r.status.value, _when(r.expires_at), _when(r.issued_at))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def cmd_sessions_revoke(args: argparse.Namespace) -> int:
    store = _store(args.backend)
    try:
        if args.session is not None:
            targets = [args.session]
        else:
            targets = [r.session_id for r in store.list_sessions(user_id=args.user, limit=100_000)]
        revoked = sum(1 for sid in targets if store.set_status(sid, SessionStatus.REVOKED))
    finally:
        store.close()
    if args.session is not None and not revoked:
        _fail("no such session in the store")
    print(json.dumps({"revoked": revoked}))
    print(
        "note: apps keep serving their cached copy up to `ttl`; push the revocation "
        "with `sessionmw revoke` for an immediate effect",
        file=sys.stderr,
    )
    return 0


# -- demo -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from sessionmw.demo import run_demo

    return run_demo(args.host, args.port)


# -- parser ---------------------------------------------------------------------------------


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionmw",
        description="Device-session gate: demo, pushed revocations, session management.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"sessionmw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="run an example app on an embedded SQLite store",
        description="Run the example Starlette app on a seeded, temporary SQLite store with "
        "the invalidation hook enabled, and print curl commands to try it.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    demo.set_defaults(func=cmd_demo)

    revoke = commands.add_parser(
        "revoke",
        help="sign and send an invalidation event",
        description="Send one invalidation event: POST it, signed, to an app's hook, or "
        "XADD it to the Redis stream every worker reads.",
    )
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--session", metavar="ID", help="revoke one session")
    what.add_argument("--user", metavar="ID", help="revoke every session of a user")
    what.add_argument("--flush", action="store_true", help="drop every cached session")
    revoke.add_argument(
        "--before",
        type=float,
        metavar="EPOCH",
        help="with --user: only sessions issued up to this Unix time (default: now)",
    )
    where = revoke.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--hook",
        metavar="URL",
        help=f"the app's hook URL (a bare origin gets {DEFAULT_HOOK_PATH})",
    )
    where.add_argument(
        "--bus",
        metavar="URL",
        help="add the event to the Redis stream, or the postgresql:// bus's table",
    )
    revoke.add_argument(
        "--secret",
        metavar="WHSEC",
        help=f"with --hook: the signing secret (default: ${SECRET_ENV}, first entry)",
    )
    revoke.add_argument(
        "--signing-key",
        metavar="WHSK",
        help="with --hook: sign v1a (ed25519) with this whsk_ key instead of, or besides, "
        "--secret; '-' reads it from stdin (make a pair: python -m sessionmw.signing)",
    )
    revoke.add_argument(
        "--stream",
        default=DEFAULT_STREAM,
        help=f"with --bus: stream key (default {DEFAULT_STREAM})",
    )
    revoke.add_argument("--timeout", type=_non_negative, default=5.0, help="seconds (default 5)")
    revoke.set_defaults(func=cmd_revoke)

    sessions = commands.add_parser(
        "sessions",
        help="create, list or revoke sessions in a SQL or Redis store, or migrate it",
        description="Manage sessions in the store that owns them (sqlite:///..., "
        "postgresql://..., redis://...).",
    )
    actions = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", help="create a session and print its ID", description="Create an active "
        "session and print its ID (a random URL-safe one unless --session-id is given).",
    )  # fmt: skip
    create.add_argument("--backend", required=True, metavar="URL", help="the store's URL")
    create.add_argument("--user", required=True, metavar="ID", help="the session's user")
    create.add_argument("--session-id", metavar="ID", help="use this ID instead of a random one")
    create.add_argument(
        "--ttl",
        type=_non_negative,
        default=86400.0,
        help="seconds until it expires (default 86400; 0: never)",
    )
    create.add_argument("--data", metavar="JSON", help="extra claims, a JSON object")
    create.add_argument(
        "--create-schema",
        action="store_true",
        help="create a table named with ?table= if it does not exist (the default "
        "table is always created on first use)",
    )
    create.set_defaults(func=cmd_sessions_create)

    listing = actions.add_parser("list", help="list sessions", description="List sessions.")
    listing.add_argument("--backend", required=True, metavar="URL", help="the store's URL")
    listing.add_argument("--user", metavar="ID", help="only this user's sessions")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_sessions_list)

    revoke_store = actions.add_parser(
        "revoke",
        help="mark sessions revoked in the store",
        description="Mark a session, or all of a user's, revoked in the store. Apps see it "
        "when their cached copy expires; use `sessionmw revoke` to push it at once.",
    )
    revoke_store.add_argument("--backend", required=True, metavar="URL", help="the store's URL")
    target = revoke_store.add_mutually_exclusive_group(required=True)
    target.add_argument("--session", metavar="ID", help="this session")
    target.add_argument("--user", metavar="ID", help="every session of this user")
    revoke_store.set_defaults(func=cmd_sessions_revoke)

    migrate = actions.add_parser(
        "migrate",
        help="create or upgrade the store's schema (never drops anything)",
        description="Create what the store is missing and print what was done: on SQL "
        "the sessions table, or on an older table the columns last_seen and idp_sid "
        "and the indexes on user_id and idp_sid; on Redis the per-user and idp-sid "
        "sets of existing sessions and their hashes' expiry (one SCAN). Nothing is "
        "ever dropped; running it again does nothing.",
    )
    migrate.add_argument("--backend", required=True, metavar="URL", help="the store's URL")
    migrate.set_defaults(func=cmd_sessions_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "before", None) is not None and args.user is None:
        parser.error("--before goes with --user")
    try:
        result: int = args.func(args)
    except (ValueError, ConfigError) as exc:
        print(f"sessionmw: error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, BackendUnavailable) as exc:
        print(f"sessionmw: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
