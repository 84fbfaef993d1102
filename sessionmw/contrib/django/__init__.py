"""Django integration: middleware, ``@exempt`` and the hook URLconf.

* ``sessionmw.contrib.django.DeviceSessionMiddleware`` in ``MIDDLEWARE``;
* ``settings.SESSIONMW = {...}`` (the keys of SPEC section 4), validated at start-up;
* ``path("", include("sessionmw.contrib.django.urls"))`` to serve the hook;
* ``@sessionmw.contrib.django.exempt`` on views that need no session;
* ``request.device_session``: the record of a valid session;
* ``sessionmw.contrib.django.sessions()``: the gate's :class:`~sessionmw.Sessions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessionmw._compat import require_extra

if TYPE_CHECKING:
    from sessionmw.sessions import Sessions

with require_extra("django", "django", feature="sessionmw.contrib.django"):
    from sessionmw.contrib.django.conf import SessionMWImproperlyConfigured, load_settings
    from sessionmw.contrib.django.middleware import DeviceSessionMiddleware, exempt

__all__ = [
    "DeviceSessionMiddleware",
    "SessionMWImproperlyConfigured",
    "exempt",
    "load_settings",
    "sessions",
]


def sessions() -> Sessions:
    """The :class:`~sessionmw.Sessions` of the gate ``settings.SESSIONMW`` configures
    (the one the middleware uses: same settings, same gate)."""
    from sessionmw.gate import gate_for
    from sessionmw.sessions import Sessions

    return Sessions(gate_for(load_settings()))
