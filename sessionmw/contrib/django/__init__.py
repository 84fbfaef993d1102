"""Django integration: middleware, ``@exempt`` and the hook URLconf.

* ``sessionmw.contrib.django.DeviceSessionMiddleware`` in ``MIDDLEWARE``;
* ``settings.SESSIONMW = {...}`` (the keys of SPEC section 4), validated at start-up;
* ``path("", include("sessionmw.contrib.django.urls"))`` to serve the hook;
* ``@sessionmw.contrib.django.exempt`` on views that need no session;
* ``request.device_session``: the record of a valid session.
"""

from __future__ import annotations

from sessionmw._compat import require_extra

with require_extra("django", "django", feature="sessionmw.contrib.django"):
    from sessionmw.contrib.django.conf import SessionMWImproperlyConfigured, load_settings
    from sessionmw.contrib.django.middleware import DeviceSessionMiddleware, exempt

__all__ = [
    "DeviceSessionMiddleware",
    "SessionMWImproperlyConfigured",
    "exempt",
    "load_settings",
]
