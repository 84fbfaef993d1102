"""Validated configuration shared by every adapter (SPEC section 4)."""

from __future__ import annotations

import base64
import difflib
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypedDict
from urllib.parse import urlsplit

from sessionmw.errors import ConfigError

ENV_PREFIX = "SESSIONMW_"

SQL_DIALECTS = frozenset(
    {"sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb"}
)
_REDIS = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+sentinel": "redis",
    "redis+cluster": "redis",
}
#: The one table of URL schemes: for each URL setting, scheme -> the kind of store or
#: bus that serves it. SQL URLs also match by dialect (``postgresql+psycopg``).
SCHEMES: dict[str, dict[str, str]] = {
    "backend": {"memory": "memory", "http": "http", "https": "http", "django": "django", **_REDIS},
    "bus": {"local": "local", "postgresql": "postgres", "postgres": "postgres", **_REDIS},
}
_SQL_SETTINGS = frozenset({"backend"})


def scheme_kind(key: str, url: str) -> str:
    """The kind serving ``url`` for setting ``key`` (``"redis"``, ``"sql"``, ...).

    >>> scheme_kind("backend", "postgresql+psycopg://db/app")
    'sql'

    Raises :class:`ConfigError` naming ``key`` for an unsupported scheme.
    """
    url = url.strip()
    if key == "backend" and url.lower() == "django":
        return "django"  # Django's default database connection (SPEC section 6)
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigError(key, "expected a URL (scheme://...)")
    kind = SCHEMES[key].get(scheme)
    if kind is None and key in _SQL_SETTINGS and scheme.split("+", 1)[0] in SQL_DIALECTS:
        kind = "sql"
    if kind is None:
        known = sorted(SCHEMES[key]) + (["<sqlalchemy dialect>"] if key in _SQL_SETTINGS else [])
        raise ConfigError(key, f"unsupported URL scheme {scheme!r} (one of {', '.join(known)})")
    return kind


_SECRET_KEYS = frozenset({"invalidation_secret"})
_ED25519_KEY_BYTES = 32
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _number(key: str, value: Any, *, minimum: float, strict: bool, integer: bool) -> Any:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise ConfigError(key, f"expected a number, got {text!r}") from None
    if integer:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(key, f"expected a whole number, got {value!r}")
    elif isinstance(value, (int, float)):
        value = float(value)
    else:
        raise ConfigError(key, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(key, "must be finite")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise ConfigError(key, f"must be {bound} {minimum:g}, got {value!r}")
    return value


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        return tuple(item for item in items if item)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        out = []
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(key, f"expected strings, got {type(item).__name__}")
            if item.strip():
                out.append(item.strip())
        return tuple(out)
    raise ConfigError(key, f"expected a list of strings, got {type(value).__name__}")


def _check_backend(value: Any) -> Any:
    if isinstance(value, str):
        scheme_kind("backend", value)
        return value.strip()
    if callable(getattr(value, "lookup", None)) and callable(getattr(value, "alookup", None)):
        return value
    raise ConfigError("backend", "expected a URL or an object with lookup() and alookup()")


def _check_secret(value: Any) -> tuple[str, ...]:
    secrets = _str_list("invalidation_secret", value)
    for secret in secrets:
        body = secret.removeprefix("whsec_")
        try:
            decoded = base64.b64decode(body, validate=True)
        except ValueError:
            raise ConfigError(
                "invalidation_secret", "each secret must be 'whsec_' followed by base64"
            ) from None
        if len(decoded) < 16:
            raise ConfigError("invalidation_secret", "each secret must hold at least 16 bytes")
    return secrets


def _check_public_key(value: Any) -> tuple[str, ...]:
    keys = _str_list("invalidation_public_key", value)
    for key in keys:
        if not key.startswith("whpk_"):
            raise ConfigError(
                "invalidation_public_key", "each key must be 'whpk_' followed by base64"
            )
        try:
            decoded = base64.b64decode(key[len("whpk_") :], validate=True)
        except ValueError:
            raise ConfigError(
                "invalidation_public_key", "each key must be 'whpk_' followed by base64"
            ) from None
        if len(decoded) != _ED25519_KEY_BYTES:
            raise ConfigError(
                "invalidation_public_key",
                f"each key must be a {_ED25519_KEY_BYTES}-byte ed25519 public key, "
                f"got {len(decoded)} bytes",
            )
    return keys


def _check_optional_url(key: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise ConfigError(key, f"expected an http(s) URL, got {type(value).__name__}")
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ConfigError(key, f"expected an http(s) URL, got {value.strip()!r}")
        return value.strip()

    return check


def _check_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(key, f"expected a path starting with '/', got {value!r}")
    return value


def _check_paths(value: Any) -> tuple[str, ...]:
    paths = _str_list("exempt_paths", value)
    for path in paths:
        _check_path("exempt_paths", path)
    return paths


def _check_methods(value: Any) -> tuple[str, ...]:
    methods = _str_list("exempt_methods", value)
    for method in methods:
        if not _TOKEN.match(method):
            raise ConfigError("exempt_methods", f"not an HTTP method: {method!r}")
    return tuple(m.upper() for m in methods)


def _check_header(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value.strip()):
        raise ConfigError("header", f"not a valid header name: {value!r}")
    return value.strip()


def _check_bus(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError("bus", f"expected a URL (local:// or redis://...), got {value!r}")
    scheme_kind("bus", value)
    return value.strip()


def _check_stream(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("stream", "expected a non-empty Redis key")
    return value.strip()


def _num(
    key: str, *, minimum: float = 0, strict: bool = False, integer: bool = False
) -> Callable[[Any], Any]:
    return lambda v: _number(key, v, minimum=minimum, strict=strict, integer=integer)


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "header": _check_header,
    "backend": _check_backend,
    "max_entries": _num("max_entries", minimum=1, integer=True),
    "ttl": _num("ttl", strict=True),
    "negative_ttl": _num("negative_ttl"),
    "stale_if_error": _num("stale_if_error"),
    "backend_timeout": _num("backend_timeout", strict=True),
    "exempt_paths": _check_paths,
    "exempt_methods": _check_methods,
    "invalidation_path": lambda v: _check_path("invalidation_path", v),
    "invalidation_secret": _check_secret,
    "bus": _check_bus,
    "stream": _check_stream,
    "bus_outage_ttl": _num("bus_outage_ttl"),
    "session_lifetime": _num("session_lifetime"),
    "idle_timeout": _num("idle_timeout"),
    "touch_interval": _num("touch_interval", strict=True),
    "max_sessions_per_user": _num("max_sessions_per_user", integer=True),
    "bus_retention": _num("bus_retention", strict=True),
    "invalidation_public_key": _check_public_key,
    "oidc_issuer": _check_optional_url("oidc_issuer"),
    "oidc_audience": lambda v: _str_list("oidc_audience", v),
    "oidc_jwks_url": _check_optional_url("oidc_jwks_url"),
    "oidc_logout_path": lambda v: _check_path("oidc_logout_path", v),
    "ssf_issuer": _check_optional_url("ssf_issuer"),
    "ssf_audience": lambda v: _str_list("ssf_audience", v),
    "ssf_jwks_url": _check_optional_url("ssf_jwks_url"),
    "ssf_path": lambda v: _check_path("ssf_path", v),
}


def redact_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query value) masked.

    >>> redact_url("postgresql://app:s3cret@db/app?sslpassword=x&table=t")
    'postgresql://app:***@db/app?sslpassword=***&table=t'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{host}"
    query = re.sub(r"((?:^|&)[^=&]*pass[^=&]*=)[^&]*", r"\1***", parts.query, flags=re.I)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def unknown_key(key: str, known: Iterable[str], *, name: str | None = None) -> ConfigError:
    """The error for a misspelt setting, suggesting the closest valid key."""
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else " (check the spelling)"
    return ConfigError(name or key, "unknown setting" + hint)


class SettingsKeywords(TypedDict, total=False):
    """The settings as keyword arguments (adapters take ``**Unpack[SettingsKeywords]``,
    so a type checker flags a misspelt key; at run time it is a ConfigError)."""

    header: str
    backend: Any
    max_entries: int
    ttl: float
    negative_ttl: float
    stale_if_error: float
    backend_timeout: float
    exempt_paths: Iterable[str] | str
    exempt_methods: Iterable[str] | str
    invalidation_path: str
    invalidation_secret: Iterable[str] | str
    bus: str
    stream: str
    bus_outage_ttl: float
    bus_retention: float
    session_lifetime: float
    idle_timeout: float
    touch_interval: float
    max_sessions_per_user: int
    invalidation_public_key: Iterable[str] | str
    oidc_issuer: str | None
    oidc_audience: Iterable[str] | str
    oidc_jwks_url: str | None
    oidc_logout_path: str
    ssf_issuer: str | None
    ssf_audience: Iterable[str] | str
    ssf_jwks_url: str | None
    ssf_path: str


@dataclass(frozen=True, repr=False)
class Settings:
    """Validated settings of one gate. Every key of SPEC section 4 is an attribute.

    Build it with keywords (``Settings(backend="sqlite:///s.db", ttl=300)``), from a
    mapping (:meth:`from_mapping`) or from ``SESSIONMW_*`` environment variables
    (:meth:`from_env`). Lists (a list, or one comma-separated string) are stored as
    tuples; ``invalidation_secret`` is a tuple of secrets (empty: no hook). Any bad key
    or value raises :class:`ConfigError` naming the key.
    """

    header: str = "X-Device-Session-ID"
    backend: Any = "memory://"
    max_entries: int = 50000
    ttl: float = 600.0
    negative_ttl: float = 5.0
    stale_if_error: float = 0.0
    backend_timeout: float = 2.0
    exempt_paths: Sequence[str] = ()
    exempt_methods: Sequence[str] = ("OPTIONS",)
    invalidation_path: str = "/_internal/session-invalidation"
    invalidation_secret: Sequence[str] = ()
    bus: str = "local://"
    stream: str = "sessionmw:invalidations"
    bus_outage_ttl: float = 5.0
    bus_retention: float = 86400.0
    session_lifetime: float = 2592000.0
    idle_timeout: float = 0.0
    touch_interval: float = 60.0
    max_sessions_per_user: int = 0
    invalidation_public_key: Sequence[str] = ()
    oidc_issuer: str | None = None
    oidc_audience: Sequence[str] = ()
    oidc_jwks_url: str | None = None
    oidc_logout_path: str = "/_internal/oidc-backchannel-logout"
    ssf_issuer: str | None = None
    ssf_audience: Sequence[str] = ()
    ssf_jwks_url: str | None = None
    ssf_path: str = "/_internal/ssf"

    def __post_init__(self) -> None:
        for name, check in _VALIDATORS.items():
            object.__setattr__(self, name, check(getattr(self, name)))
        if self.idle_timeout and self.touch_interval >= self.idle_timeout:
            raise ConfigError(
                "touch_interval",
                f"must be below idle_timeout ({self.idle_timeout:g}), got "
                f"{self.touch_interval:g}: activity would reach the store too late",
            )
        for prefix in ("oidc", "ssf"):
            if getattr(self, f"{prefix}_issuer") and not getattr(self, f"{prefix}_audience"):
                raise ConfigError(
                    f"{prefix}_audience",
                    f"required with {prefix}_issuer: this app's client ID(s) at the provider",
                )

    def __repr__(self) -> str:
        # Secrets never appear: not in reprs, error pages or framework debug views.
        shown = []
        for key in self.keys():
            value = getattr(self, key)
            if key in _SECRET_KEYS and value:
                value = f"<{len(value)} secret(s)>"
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            shown.append(f"{key}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Names of every setting, in documentation order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Settings:
        """Settings from a mapping whose keys are setting names (any letter case)."""
        known = set(cls.keys())
        values: dict[str, Any] = {}
        for raw_key, value in mapping.items():
            key = str(raw_key).lower()
            if key not in known:
                raise unknown_key(str(raw_key), known)
            values[key] = value
        return cls(**values)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = ENV_PREFIX
    ) -> Settings:
        """Settings from ``SESSIONMW_<KEY>`` variables; an unknown one is an error."""
        env = os.environ if environ is None else environ
        known = set(cls.keys())
        values: dict[str, Any] = {}
        for name, value in env.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            if key not in known:
                raise unknown_key(key, known, name=name)
            values[key] = value
        return cls(**values)

    @classmethod
    def coerce(
        cls, settings: Settings | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Settings:
        """What adapters accept: a ``Settings``, a mapping, keywords, or a mix.

        A keyword given as ``None`` counts as not given."""
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if settings is None:
            return cls.from_mapping(kwargs)
        base = settings if isinstance(settings, Settings) else cls.from_mapping(settings)
        return base.with_changes(**kwargs) if kwargs else base

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some keys changed (validated like any other: ``replace``
        goes through ``__init__``, which also answers a misspelt key)."""
        return replace(self, **changes)

    @property
    def hook_enabled(self) -> bool:
        """The hook is served: a shared secret or a public key is configured."""
        return bool(self.invalidation_secret or self.invalidation_public_key)


def _checked_init(init: Callable[..., None]) -> Callable[..., None]:
    """The dataclass's ``__init__``, answering a misspelt keyword with the same
    ConfigError (and suggestion) as every other way of giving settings."""

    @functools.wraps(init)
    def __init__(self: Settings, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in _KEYS:
                raise unknown_key(key, _KEYS)
        init(self, *args, **kwargs)

    return __init__


_KEYS = Settings.keys()
Settings.__init__ = _checked_init(Settings.__init__)  # type: ignore[method-assign]
