"""Nothing that prints configuration shows a secret: reprs of settings, gates,
backends and buses, configuration errors, and what a framework's debug page would
render of them."""

from __future__ import annotations

import pytest

from sessionmw import ConfigError, Settings
from sessionmw.gate import Gate
from sessionmw.signing import new_secret

SECRET = new_secret()
PASSWORD = "pa55-w0rd-xyzzy"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        backend=f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app?sslpassword={PASSWORD}",
        bus=f"redis://:{PASSWORD}@127.0.0.1:1/0",
        invalidation_secret=[SECRET, new_secret()],
    )


def test_settings_repr_hides_secrets_and_passwords(settings: Settings) -> None:
    shown = repr(settings) + str(settings)
    assert SECRET not in shown
    assert SECRET.removeprefix("whsec_") not in shown
    assert PASSWORD not in shown
    assert "invalidation_secret='<2 secret(s)>'" in shown
    assert "postgresql+psycopg://app:***@127.0.0.1:1/app?sslpassword=***" in shown
    assert "redis://:***@127.0.0.1:1/0" in shown


def test_gate_and_its_parts_hide_them_too(settings: Settings) -> None:
    gate = Gate(settings)
    try:
        for obj in (gate, gate.backend, gate.bus, gate.hook, gate.cache, vars(gate)):
            text = repr(obj)
            assert SECRET not in text, type(obj)
            assert PASSWORD not in text, type(obj)
    finally:
        gate.stop()


@pytest.mark.parametrize(
    "changes",
    [
        {"invalidation_secret": "whsec_" + "A" * 10},
        {"invalidation_secret": PASSWORD},
        {"backend": f"ftp://u:{PASSWORD}@host/x"},
        {"bus": f"nats://u:{PASSWORD}@host"},
    ],
)
def test_config_errors_do_not_echo_the_value(changes: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**changes)  # type: ignore[arg-type]
    assert PASSWORD not in str(info.value)
    assert "A" * 10 not in str(info.value)
