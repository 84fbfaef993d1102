"""Settings: every key from keywords, a mapping and the environment; errors name the key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sessionmw import ConfigError, Settings
from sessionmw.backends import MemoryBackend
from sessionmw.settings import scheme_kind

SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"

ENV = {
    "SESSIONMW_HEADER": "X-Session",
    "SESSIONMW_BACKEND": "sqlite:///sessions.db",
    "SESSIONMW_MAX_ENTRIES": "1000",
    "SESSIONMW_TTL": "30",
    "SESSIONMW_NEGATIVE_TTL": "0",
    "SESSIONMW_STALE_IF_ERROR": "2.5",
    "SESSIONMW_BACKEND_TIMEOUT": "0.5",
    "SESSIONMW_EXEMPT_PATHS": "/healthz, /static/",
    "SESSIONMW_EXEMPT_METHODS": "options,head",
    "SESSIONMW_INVALIDATION_PATH": "/hooks/sessions",
    "SESSIONMW_INVALIDATION_SECRET": f"{SECRET_A},{SECRET_B}",
    "SESSIONMW_BUS": "redis://127.0.0.1:6379/0",
    "SESSIONMW_STREAM": "app:invalidations",
    "SESSIONMW_BUS_OUTAGE_TTL": "3",
    "SESSIONMW_SESSION_LIFETIME": "3600",
    "SESSIONMW_IDLE_TIMEOUT": "900",
    "SESSIONMW_TOUCH_INTERVAL": "30",
    "SESSIONMW_MAX_SESSIONS_PER_USER": "5",
    "SESSIONMW_BUS_RETENTION": "3600",
    "SESSIONMW_INVALIDATION_PUBLIC_KEY": "whpk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "SESSIONMW_OIDC_ISSUER": "https://idp.example/realms/app",
    "SESSIONMW_OIDC_AUDIENCE": "app-a, app-b",
    "SESSIONMW_OIDC_JWKS_URL": "https://idp.example/certs",
    "SESSIONMW_OIDC_LOGOUT_PATH": "/auth/backchannel",
    "SESSIONMW_SSF_ISSUER": "https://ssf.example",
    "SESSIONMW_SSF_AUDIENCE": "https://app.example",
    "SESSIONMW_SSF_JWKS_URL": "https://ssf.example/jwks",
    "SESSIONMW_SSF_PATH": "/auth/ssf",
}

EXPECTED: dict[str, Any] = {
    "header": "X-Session",
    "backend": "sqlite:///sessions.db",
    "max_entries": 1000,
    "ttl": 30.0,
    "negative_ttl": 0.0,
    "stale_if_error": 2.5,
    "backend_timeout": 0.5,
    "exempt_paths": ("/healthz", "/static/"),
    "exempt_methods": ("OPTIONS", "HEAD"),
    "invalidation_path": "/hooks/sessions",
    "invalidation_secret": (SECRET_A, SECRET_B),
    "bus": "redis://127.0.0.1:6379/0",
    "stream": "app:invalidations",
    "bus_outage_ttl": 3.0,
    "session_lifetime": 3600.0,
    "idle_timeout": 900.0,
    "touch_interval": 30.0,
    "max_sessions_per_user": 5,
    "bus_retention": 3600.0,
    "invalidation_public_key": ("whpk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",),
    "oidc_issuer": "https://idp.example/realms/app",
    "oidc_audience": ("app-a", "app-b"),
    "oidc_jwks_url": "https://idp.example/certs",
    "oidc_logout_path": "/auth/backchannel",
    "ssf_issuer": "https://ssf.example",
    "ssf_audience": ("https://app.example",),
    "ssf_jwks_url": "https://ssf.example/jwks",
    "ssf_path": "/auth/ssf",
}


def test_defaults_match_the_spec() -> None:
    """Without configuration every key has the SPEC's default and no hook is served."""
    s = Settings()
    assert s.header == "X-Device-Session-ID"
    assert s.backend == "memory://"
    assert (s.max_entries, s.ttl, s.negative_ttl, s.stale_if_error) == (50000, 600, 5, 0)
    assert s.backend_timeout == 2
    assert s.exempt_paths == ()
    assert s.exempt_methods == ("OPTIONS",)
    assert s.invalidation_path == "/_internal/session-invalidation"
    assert s.invalidation_secret == ()
    assert not s.hook_enabled
    assert (s.bus, s.stream, s.bus_outage_ttl) == ("local://", "sessionmw:invalidations", 5)


def test_env_covers_every_key() -> None:
    """Each SESSIONMW_<KEY> variable sets its key; the table above lists them all."""
    assert set(EXPECTED) == set(Settings.keys())
    s = Settings.from_env(ENV)
    for key, value in EXPECTED.items():
        assert getattr(s, key) == value, key
    assert s.hook_enabled


def test_mapping_and_keywords_agree_with_env() -> None:
    """A mapping (any key case) and keywords give the same settings as the environment."""
    from_env = Settings.from_env(ENV)
    raw = {k.removeprefix("SESSIONMW_"): v for k, v in ENV.items()}
    assert Settings.from_mapping(raw) == from_env
    assert Settings.from_mapping({k.lower(): v for k, v in raw.items()}) == from_env
    assert Settings(**EXPECTED) == from_env


def test_other_environment_variables_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/bin", "SESSIONMWX": "1"}) == Settings()


@pytest.mark.parametrize(
    ("name", "key"),
    [("SESSIONMW_TTLL", "SESSIONMW_TTL" + "L"), ("SESSIONMW_BACKEND_URL", "SESSIONMW_BACKEND_URL")],
)
def test_unknown_env_variable_is_an_error(name: str, key: str) -> None:
    """A typo in a SESSIONMW_ variable must not pass silently."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: "1"})
    assert info.value.key == key
    assert key in str(info.value)


def test_unknown_mapping_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="ttl_seconds") as info:
        Settings.from_mapping({"ttl_seconds": 3})
    assert info.value.key == "ttl_seconds"
    with pytest.raises(ConfigError, match="ttl_seconds: unknown setting") as info:
        Settings(ttl_seconds=3)  # type: ignore[call-arg]
    assert info.value.key == "ttl_seconds"


BAD_VALUES = [
    ("header", "X Session"),
    ("header", ""),
    ("backend", "ftp://example/sessions"),
    ("backend", "not a url"),
    ("backend", 42),
    ("max_entries", "0"),
    ("max_entries", "-5"),
    ("max_entries", "1.5"),
    ("max_entries", "many"),
    ("max_entries", True),
    ("ttl", "0"),
    ("ttl", "-1"),
    ("ttl", "ten"),
    ("ttl", "nan"),
    ("ttl", "inf"),
    ("negative_ttl", "-0.1"),
    ("stale_if_error", "-1"),
    ("backend_timeout", "0"),
    ("backend_timeout", "x"),
    ("exempt_paths", "healthz"),
    ("exempt_paths", 7),
    ("exempt_methods", "GE T"),
    ("invalidation_path", "hook"),
    ("invalidation_secret", "not-base64!!"),
    ("invalidation_secret", "whsec_c2hvcnQ="),
    ("bus", "kafka://broker"),
    ("bus", "memory://"),
    ("stream", ""),
    ("bus_outage_ttl", "-3"),
    ("bus_retention", "0"),
    ("bus_retention", "-1"),
    ("invalidation_public_key", "whsec_" + "A" * 44),
    ("invalidation_public_key", "whpk_c2hvcnQ="),
    ("invalidation_public_key", "whpk_not base64"),
    ("oidc_issuer", "idp.example"),
    ("oidc_issuer", "ftp://idp.example"),
    ("oidc_jwks_url", "file:///etc/passwd"),
    ("oidc_logout_path", "logout"),
    ("ssf_issuer", "nope"),
    ("ssf_path", "ssf"),
]


@pytest.mark.parametrize("prefix", ["oidc", "ssf"])
def test_issuer_without_audience_names_the_audience(prefix: str) -> None:
    """An issuer alone would accept tokens meant for any client: refused at start-up."""
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({f"{prefix}_issuer": "https://idp.example"})
    assert info.value.key == f"{prefix}_audience"


def test_public_key_alone_serves_the_hook() -> None:
    """With only invalidation_public_key (v1a signatures) the hook is still served."""
    key = "whpk_" + "A" * 43 + "="
    assert Settings(invalidation_public_key=key).hook_enabled


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
        "redis+cluster://127.0.0.1:7000",
        "rediss://127.0.0.1:6380/0?ssl_cert_reqs=required",
    ],
)
def test_every_redis_form_is_a_redis_backend_and_bus(url: str) -> None:
    assert scheme_kind("backend", url) == scheme_kind("bus", url) == "redis"


def test_postgres_bus_and_django_backend_schemes() -> None:
    assert scheme_kind("bus", "postgresql://postgres@127.0.0.1/test") == "postgres"
    assert (
        scheme_kind("backend", "django") == scheme_kind("backend", "django://replica") == "django"
    )


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_value_names_the_key(key: str, value: Any) -> None:
    """Bad values fail at construction, from every source, with the key in the message."""
    builders: list[Callable[[], Settings]] = [
        lambda: Settings(**{key: value}),
        lambda: Settings.from_mapping({key: value}),
    ]
    for build in builders:
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.key == key
        assert str(info.value).startswith(key)
    if isinstance(value, str):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({f"SESSIONMW_{key.upper()}": value})
        assert info.value.key == key


def test_backend_accepts_an_object_and_sql_urls() -> None:
    backend = MemoryBackend()
    assert Settings(backend=backend).backend is backend
    for url in ("postgresql+psycopg://u@h/db", "sqlite:////tmp/x.db", "https://auth/{session_id}"):
        assert Settings(backend=url).backend == url


def test_coerce_and_with_changes() -> None:
    base = Settings(ttl=10)
    assert Settings.coerce(base) is base
    assert Settings.coerce(base, negative_ttl=0) == Settings(ttl=10, negative_ttl=0)
    assert Settings.coerce({"ttl": "10"}) == base
    assert Settings.coerce(None, ttl=10) == base
    with pytest.raises(ConfigError) as info:
        base.with_changes(tll=3)
    assert info.value.key == "tll"


def test_settings_are_hashable_and_immutable() -> None:
    """Equal settings hash alike: adapters configured alike share one gate."""
    assert hash(Settings(exempt_paths=["/a"])) == hash(Settings(exempt_paths=("/a",)))
    with pytest.raises(AttributeError):
        Settings().ttl = 3  # type: ignore[misc]


def test_touch_interval_must_be_below_idle_timeout() -> None:
    """last_seen must reach the store well within the idle timeout (SPEC section 11)."""
    with pytest.raises(ConfigError) as info:
        Settings(idle_timeout=60, touch_interval=60)
    assert info.value.key == "touch_interval"
    with pytest.raises(ConfigError, match="touch_interval"):
        Settings.from_env({"SESSIONMW_IDLE_TIMEOUT": "30", "SESSIONMW_TOUCH_INTERVAL": "45"})
    assert Settings(idle_timeout=61, touch_interval=60).idle_timeout == 61
    assert Settings(touch_interval=600).idle_timeout == 0, "no idle timeout: no constraint"
