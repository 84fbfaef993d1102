"""``manage.py sessionmw_sessions list [--user U] [--limit N] [--json]`` and
``manage.py sessionmw_sessions revoke (--session ID | --user ID)``.

Both go through the :class:`~sessionmw.Sessions` of ``settings.SESSIONMW`` (the gate
the middleware uses), so a revocation is written to the store and then published on
the bus to every worker, exactly as from a view. ``list`` prints the session IDs it
was asked for (that is its purpose); nothing here logs a raw ID, and ``revoke``
reports a session by its short hash.

Exit codes: 0 done; 1 no such session or user; 2 bad arguments (argparse); 3 the
store or the bus is unavailable (the store write before a bus failure stands: run
the same command again to push the event).
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionmw._log import hash_id
from sessionmw.errors import BackendUnavailable, BusUnavailable, ConfigError, ReadOnlyStore

NOT_FOUND = 1
UNAVAILABLE = 3


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        from argparse import ArgumentTypeError

        raise ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class Command(BaseCommand):
    help = "List or revoke device sessions (revocations are pushed to every worker)."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True, metavar="{list,revoke}")
        # Django's CommandParser gives its subparsers its own class: called from
        # code (call_command) a usage error is a CommandError, not a SystemExit.
        listing: ArgumentParser = commands.add_parser(
            "list", help="active, unexpired sessions, newest first"
        )
        listing.add_argument("--user", help="only this user's sessions")
        listing.add_argument("--limit", type=_positive, default=100, help="at most this many")
        listing.add_argument("--json", action="store_true", help="one JSON object per line")
        revoking: ArgumentParser = commands.add_parser(
            "revoke", help="revoke one session or every session of a user"
        )
        target = revoking.add_mutually_exclusive_group(required=True)
        target.add_argument("--session", help="the session ID to revoke")
        target.add_argument("--user", help="revoke every active session of this user")

    def handle(self, *args: Any, **options: Any) -> None:
        from sessionmw.contrib.django import sessions

        try:
            lifecycle = sessions()
            if options["action"] == "list":
                self._list(lifecycle, options["user"], options["limit"], options["json"])
            elif options["session"] is not None:
                self._revoke_session(lifecycle, options["session"])
            else:
                self._revoke_user(lifecycle, options["user"])
        except ConfigError as exc:
            raise CommandError(str(exc), returncode=2) from None
        except ReadOnlyStore as exc:
            raise CommandError(str(exc), returncode=2) from None
        except (BackendUnavailable, BusUnavailable) as exc:
            raise CommandError(str(exc), returncode=UNAVAILABLE) from None

    def _list(self, lifecycle: Any, user: str | None, limit: int, as_json: bool) -> None:
        if user is not None:
            listed = lifecycle.list(user)[:limit]
        else:
            listed = self._newest(lifecycle, limit)
        for session in listed:
            row = {
                "session_id": session.session_id,
                "user_id": session.user_id,
                "issued_at": session.issued_at,
                "expires_at": session.expires_at,
                "last_seen": session.last_seen,
                "idp_sid": session.idp_sid,
            }
            if as_json:
                self.stdout.write(json.dumps(row))
            else:
                self.stdout.write("\t".join("-" if v is None else str(v) for v in row.values()))
        if not as_json:
            self.stderr.write(f"{len(listed)} active session(s)")

    @staticmethod
    def _newest(lifecycle: Any, limit: int) -> list[Any]:
        from sessionmw.backends.django import DjangoBackend

        store = lifecycle.store
        if not isinstance(store, DjangoBackend):
            raise CommandError(
                "listing every user's sessions needs backend = 'django'; give --user",
                returncode=2,
            )
        return store.list_active(limit)

    def _revoke_session(self, lifecycle: Any, session_id: str) -> None:
        tag = hash_id(session_id)
        if lifecycle.get(session_id) is None:
            raise CommandError(f"no session {tag} (hash) in the store", returncode=NOT_FOUND)
        if lifecycle.revoke(session_id):
            self.stdout.write(f"revoked session {tag}; every worker was told")
        else:
            self.stdout.write(f"session {tag} was not active; its event was pushed again")

    def _revoke_user(self, lifecycle: Any, user_id: str) -> None:
        count = lifecycle.revoke_user(user_id)
        self.stdout.write(f"revoked {count} session(s) of user {user_id}; every worker was told")
