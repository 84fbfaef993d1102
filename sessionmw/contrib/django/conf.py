"""Reading and validating ``settings.SESSIONMW`` (SPEC section 4)."""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from sessionmw.errors import ConfigError
from sessionmw.settings import Settings

__all__ = ["SessionMWImproperlyConfigured", "load_settings"]

SETTING_NAME = "SESSIONMW"


class SessionMWImproperlyConfigured(ConfigError, ImproperlyConfigured):
    """``settings.SESSIONMW`` is wrong: both a :class:`~sessionmw.ConfigError` and
    Django's ``ImproperlyConfigured``. ``key`` names the offending key."""


def load_settings() -> Settings:
    """The validated ``settings.SESSIONMW`` dict (missing: every default).

    Raises :class:`SessionMWImproperlyConfigured` naming the bad key.
    """
    raw = getattr(django_settings, SETTING_NAME, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SessionMWImproperlyConfigured(
            SETTING_NAME, f"expected a dict, got {type(raw).__name__}"
        )
    try:
        return Settings.from_mapping(raw)
    except ConfigError as exc:
        message = str(exc).removeprefix(f"{exc.key}: ")
        raise SessionMWImproperlyConfigured(
            exc.key, f"{message} (in settings.{SETTING_NAME})"
        ) from exc
