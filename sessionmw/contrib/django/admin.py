"""The admin of ``device_sessions``: list, filter, search, and a "Revoke" action.

Rows are read-only here: sessions are created by :meth:`sessionmw.Sessions.create` and
revoked by the action, which goes through :meth:`sessionmw.Sessions.revoke` of the
app's gate (``sessionmw.contrib.django.sessions()``), so the revocation is applied to
this process's cache and published on the bus to every other worker before the
admin answers. Like Django's own "Delete selected", the action first shows a
confirmation page (the selected sessions by hash, user and status); only its "Yes,
revoke" button revokes. Editing or deleting a row directly would skip those events,
so the admin offers neither.

Session IDs are bearer credentials: the changelist shows the short hash sessionmw's
logs use (so a log line can be matched to a row), links to no per-session page (its
URL would carry the raw ID into access logs), and searches by user and identity
provider session only.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from sessionmw._log import hash_id
from sessionmw.contrib.django.models import DeviceSession
from sessionmw.errors import BackendUnavailable, BusUnavailable

__all__ = ["DeviceSessionAdmin", "UserFilter"]

#: Users offered by the user filter (a user not among them: search for it).
USER_CHOICES = 100


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return repr(epoch)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


class UserFilter(admin.SimpleListFilter):
    """Filter by ``user_id``: the first users in order (bounded, by the user_id index),
    plus the one selected; any user through ``?user_id=...`` or the search box."""

    title = "user"
    parameter_name = "user_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        users = list(
            DeviceSession.objects.order_by("user_id")
            .values_list("user_id", flat=True)
            .distinct()[:USER_CHOICES]
        )
        selected = self.value()
        if selected and selected not in users:
            users.append(selected)
        return [(user, user) for user in users]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(user_id=value) if value else queryset


@admin.register(DeviceSession)
class DeviceSessionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("session", "user_id", "status", "issued", "expires", "last_seen_at", "idp_sid")
    list_display_links = None
    list_filter = ("status", UserFilter)
    search_fields = ("=user_id", "=idp_sid")
    search_help_text = "An exact user ID or identity provider session ID."
    ordering = ("-issued_at",)
    show_full_result_count = False
    actions = ["revoke_sessions"]

    @admin.display(description="session (hash)")
    def session(self, obj: DeviceSession) -> str:
        return hash_id(obj.session_id)

    @admin.display(description="issued", ordering="issued_at")
    def issued(self, obj: DeviceSession) -> str:
        return _when(obj.issued_at)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, obj: DeviceSession) -> str:
        return _when(obj.expires_at)

    @admin.display(description="last seen", ordering="last_seen")
    def last_seen_at(self, obj: DeviceSession) -> str:
        return _when(obj.last_seen)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # Sessions.create makes sessions (with a fresh random ID)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: status changes go through the Revoke action

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a deleted row pushes no event: revoke instead

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Who may revoke: users with the model's ``change`` permission (the action
        changes the status; ``view`` alone lists sessions without revoking them)."""
        opts = self.opts
        user: Any = request.user
        return bool(user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))

    #: The confirmation page of the Revoke action; None: the first of
    #: ``admin/sessionmw/devicesession/revoke_selected_confirmation.html`` and
    #: ``admin/sessionmw/revoke_selected_confirmation.html`` (Django's lookup order).
    revoke_selected_confirmation_template: str | None = None

    @admin.action(description="Revoke selected sessions", permissions=["revoke"])
    def revoke_sessions(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> TemplateResponse | None:
        """Without ``post`` in the form: the confirmation page. With it (the page's
        "Yes, revoke" button): revoke each selected session, then the changelist."""
        if not request.POST.get("post"):
            return self._confirm_revoke(request, queryset)
        self._revoke(request, queryset)
        return None

    def _confirm_revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse:
        opts = self.opts
        rows = list(
            queryset.order_by("user_id", "session_id").values_list(
                "session_id", "user_id", "status"
            )
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Revoke device sessions",
            "subtitle": None,
            "opts": opts,
            "media": self.media,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            # The raw IDs only as the hidden inputs' values (as the changelist's
            # checkboxes carry them); the page shows each session by its hash.
            "selected": [session_id for session_id, _, _ in rows],
            "sessions": [
                {"hash": hash_id(session_id), "user_id": user_id, "status": status}
                for session_id, user_id, status in rows
            ],
            "count": len(rows),
            "active": sum(1 for _, _, status in rows if status == "active"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            self.revoke_selected_confirmation_template
            or [
                f"admin/{opts.app_label}/{opts.model_name}/revoke_selected_confirmation.html",
                f"admin/{opts.app_label}/revoke_selected_confirmation.html",
            ],
            context,
        )

    def _revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        from sessionmw.contrib.django import sessions

        lifecycle = sessions()
        revoked = pushed = 0
        try:
            for session_id in queryset.values_list("session_id", flat=True):
                # Every selected session gets its event, active or not: pushing again
                # is how a revocation interrupted by a bus outage is finished.
                revoked += lifecycle.revoke(session_id)
                pushed += 1
        except (BackendUnavailable, BusUnavailable) as exc:
            self.message_user(
                request,
                f"Stopped after {pushed} session(s): {exc}. Revoked sessions stay revoked; "
                "select them again to push their events once the bus is back.",
                messages.ERROR,
            )
            return
        self.message_user(
            request,
            f"Revoked {revoked} session(s); {pushed - revoked} were not active. "
            "Every worker was told.",
            messages.SUCCESS,
        )
