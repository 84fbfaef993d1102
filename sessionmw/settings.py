"""Validated configuration shared by every adapter (SPEC section 4)."""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from sessionmw.errors import ConfigError

ENV_PREFIX = "SESSIONMW_"

#: URL schemes accepted for ``backend`` (SQL: any SQLAlchemy dialect, optionally ``+driver``).
BACKEND_SCHEMES = frozenset({"memory", "redis", "rediss", "unix", "http", "https"})
SQL_DIALECTS = frozenset(
    {"sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb"}
)
BUS_SCHEMES = frozenset({"local", "redis", "rediss", "unix"})

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


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def _check_backend(value: Any) -> Any:
    if isinstance(value, str):
        scheme = _scheme(value.strip())
        if not scheme:
            raise ConfigError("backend", f"not a URL: {value!r}")
        if scheme in BACKEND_SCHEMES or scheme.split("+", 1)[0] in SQL_DIALECTS:
            return value.strip()
        raise ConfigError("backend", f"unsupported URL scheme {scheme!r}")
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
    if not isinstance(value, str) or _scheme(value.strip()) not in BUS_SCHEMES:
        raise ConfigError("bus", f"expected local:// or redis://host:port/db, got {value!r}")
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
}


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
        for name, check in _VALIDATORS.items():
            object.__setattr__(self, name, check(getattr(self, name)))

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
                raise ConfigError(str(raw_key), "unknown setting")
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
                raise ConfigError(name, "unknown setting (check the spelling)")
            values[key] = value
        return cls(**values)

    @classmethod
    def coerce(
        cls, settings: Settings | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Settings:
        """What adapters accept: a ``Settings``, a mapping, keywords, or a mix."""
        if settings is None:
            return cls.from_mapping(kwargs)
        base = settings if isinstance(settings, Settings) else cls.from_mapping(settings)
        return base.with_changes(**kwargs) if kwargs else base

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some keys changed (validated like any other)."""
        unknown = set(changes) - set(self.keys())
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown setting")
        return replace(self, **changes)

    @property
    def hook_enabled(self) -> bool:
        return bool(self.invalidation_secret)
