"""Django REST framework authentication by device session (SPEC section 13).

::

    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "sessionmw.contrib.drf.DeviceSessionAuthentication",
            "rest_framework.authentication.TokenAuthentication",
        ],
    }

For a request carrying a valid device session, ``request.user`` is the user whose
``USERNAME_FIELD`` (or :attr:`DeviceSessionAuthentication.user_lookup_field`) equals
the session's ``user_id`` and ``request.auth`` is the :class:`~sessionmw.SessionRecord`.
Without the header the class does not authenticate, so the next class (a DRF token,
Django's session) gets its turn; with a header that is malformed, unknown, revoked or
expired, or whose user does not exist or is inactive, DRF answers 401
``{"error": "invalid_session"}`` with ``WWW-Authenticate: DeviceSession`` (when this
class is the first of the view's classes, as DRF takes that header from the first);
with the store down, 503 ``{"error": "session_backend_unavailable"}`` and
``Retry-After: 1``.

Behind ``sessionmw.contrib.django.DeviceSessionMiddleware`` the session the middleware
checked is reused (no second lookup). On a path the middleware exempts, or without
the middleware, the header is checked here with the gate of ``settings.SESSIONMW``:
the same cache, bus and answers as the middleware.
"""

from __future__ import annotations

from typing import Any

from sessionmw._compat import require_extra

with require_extra("rest_framework", "drf", feature="sessionmw.contrib.drf"):
    from rest_framework import exceptions
    from rest_framework.authentication import BaseAuthentication
    from rest_framework.request import Request

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from sessionmw._environ import environ_key
from sessionmw.answers import INVALID, UNAVAILABLE, Answer
from sessionmw.contrib.django.conf import load_settings
from sessionmw.gate import Gate, gate_for
from sessionmw.records import SessionRecord

__all__ = ["DeviceSessionAuthentication", "DeviceSessionUnavailable"]

AUTH_SCHEME = "DeviceSession"


class DeviceSessionUnavailable(exceptions.APIException):
    """The session store cannot answer: 503 with ``Retry-After: 1`` (DRF sends
    ``Retry-After`` for an exception with a ``wait``)."""

    status_code = 503
    default_detail = {"error": UNAVAILABLE.code}
    default_code = UNAVAILABLE.code
    wait = 1


def _failed(answer: Answer) -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed({"error": answer.code}, code=answer.code)


class DeviceSessionAuthentication(BaseAuthentication):
    """Authenticate a DRF request by its device session header.

    Subclass to change how the user is found: set :attr:`user_lookup_field` (a field
    of the user model holding the session's ``user_id``, e.g. ``"pk"`` or
    ``"email"``), or override :meth:`get_user`.
    """

    #: The user model's field matched against the record's ``user_id``
    #: (``None``: the model's ``USERNAME_FIELD``).
    user_lookup_field: str | None = None

    def gate(self) -> Gate:
        """The gate of ``settings.SESSIONMW`` (the one the middleware uses)."""
        gate = gate_for(load_settings())
        if not gate.started:
            gate.start()
        return gate

    def authenticate(self, request: Request) -> tuple[Any, SessionRecord] | None:
        django_request = request._request
        record = getattr(django_request, "device_session", None)
        if isinstance(record, SessionRecord):
            # The middleware checked this request already.
            return self.get_user(record), record
        gate = self.gate()
        value = django_request.META.get(environ_key(gate.header))
        if value is None:
            return None  # not ours: the next authentication class may try
        outcome = gate.check(value)
        if isinstance(outcome, Answer):
            if outcome is UNAVAILABLE:
                raise DeviceSessionUnavailable()
            raise _failed(outcome)
        return self.get_user(outcome), outcome

    def get_user(self, record: SessionRecord) -> Any:
        """The active user whose :attr:`user_lookup_field` equals ``record.user_id``;
        ``AuthenticationFailed`` (``invalid_session``, the reason only in the log)
        when there is none or it is inactive."""
        model = get_user_model()
        lookup: dict[str, Any] = {
            str(self.user_lookup_field or model.USERNAME_FIELD): record.user_id
        }
        try:
            user = model._default_manager.get(**lookup)
        except (model.DoesNotExist, ValueError, ValidationError):
            self.gate().reject(INVALID, "unknown_user", record.session_id)
            raise _failed(INVALID) from None
        if not getattr(user, "is_active", True):
            self.gate().reject(INVALID, "inactive_user", record.session_id)
            raise _failed(INVALID)
        return user

    def authenticate_header(self, request: Request) -> str:
        return AUTH_SCHEME
