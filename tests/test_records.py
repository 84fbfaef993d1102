"""build_record / record_or_none: the one parser every backend uses."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from structlog.testing import capture_logs

from sessionmw import SessionRecord, SessionStatus
from sessionmw._log import BACKEND_MALFORMED, hash_id
from sessionmw.records import MalformedRecord, build_record, record_or_none

SID = "sid-Raw+ID/=="


def test_minimal_record_has_defaults() -> None:
    record = build_record(SID, {"user_id": "u1", "status": "active"})
    assert record == SessionRecord(SID, "u1", SessionStatus.ACTIVE)
    assert record.expires_at is None
    assert record.issued_at is None
    assert dict(record.data) == {}
    assert record.active


def test_full_record_from_native_json_types() -> None:
    raw = {
        "user_id": "u1",
        "status": "revoked",
        "expires_at": 1767225600,
        "issued_at": 1767220000.5,
        "data": {"role": "admin", "n": [1, 2]},
        "unrelated": "ignored",
    }
    record = build_record(SID, raw)
    assert record.status is SessionStatus.REVOKED
    assert not record.active
    assert record.expires_at == 1767225600.0
    assert isinstance(record.expires_at, float)
    assert record.issued_at == 1767220000.5
    assert dict(record.data) == {"role": "admin", "n": [1, 2]}


def test_bytes_fields_as_redis_returns_them() -> None:
    raw = {
        b"user_id": b"u1",
        b"status": b"active",
        b"expires_at": b"10.5",
        b"issued_at": b"",
        b"data": b'{"a": 1}',
    }
    record = build_record(SID, raw)
    assert record.user_id == "u1"
    assert record.expires_at == 10.5
    assert record.issued_at is None
    assert dict(record.data) == {"a": 1}


def test_data_is_read_only_and_not_aliased() -> None:
    source = {"a": 1}
    record = build_record(SID, {"user_id": "u", "status": "active", "data": source})
    source["a"] = 2
    assert record.data["a"] == 1
    assert isinstance(record.data, MappingProxyType)
    with pytest.raises(TypeError):
        record.data["b"] = 1  # type: ignore[index]


@pytest.mark.parametrize("status", ["ACTIVE", "Active", "", "expired", None, 1, ["active"], {}])
def test_bad_status_is_malformed(status: Any) -> None:
    with pytest.raises(MalformedRecord, match="status"):
        build_record(SID, {"user_id": "u", "status": status})


@pytest.mark.parametrize("user_id", [None, "", 7, ["u"], b""])
def test_bad_user_id_is_malformed(user_id: Any) -> None:
    raw: dict[str, Any] = {"status": "active"}
    if user_id is not None:
        raw["user_id"] = user_id
    with pytest.raises(MalformedRecord, match="user_id"):
        build_record(SID, raw)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("12", 12.0), (0, 0.0), (-1.5, -1.5)]
)
def test_times_accepted(value: Any, expected: float | None) -> None:
    raw = {"user_id": "u", "status": "active", "expires_at": value, "issued_at": value}
    record = build_record(SID, raw)
    assert record.expires_at == expected
    assert record.issued_at == expected


@pytest.mark.parametrize("key", ["expires_at", "issued_at"])
@pytest.mark.parametrize(
    "value", [True, False, "abc", "nan", "inf", "-inf", float("nan"), 10**400, [], {}]
)
def test_bad_times_are_malformed(key: str, value: Any) -> None:
    with pytest.raises(MalformedRecord, match=key):
        build_record(SID, {"user_id": "u", "status": "active", key: value})


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"', "1", "null", b"\xff", [1], 3])
def test_bad_data_is_malformed(data: Any) -> None:
    with pytest.raises(MalformedRecord):
        build_record(SID, {"user_id": "u", "status": "active", "data": data})


def test_deeply_nested_data_is_malformed_not_a_crash() -> None:
    data = "[" * 100_000 + "]" * 100_000
    with pytest.raises(MalformedRecord, match="data"):
        build_record(SID, {"user_id": "u", "status": "active", "data": data})


def test_non_utf8_bytes_are_malformed() -> None:
    with pytest.raises(MalformedRecord, match="UTF-8"):
        build_record(SID, {b"user_id": b"\xff\xfe", b"status": b"active"})
    with pytest.raises(MalformedRecord, match="UTF-8"):
        build_record(SID, {b"\xff": b"x", b"user_id": b"u", b"status": b"active"})


def test_empty_data_values_mean_no_data() -> None:
    for data in (None, "", b""):
        record = build_record(SID, {"user_id": "u", "status": "active", "data": data})
        assert dict(record.data) == {}
    record = build_record(SID, {"user_id": "u", "status": "active", "data": json.dumps({})})
    assert dict(record.data) == {}


def test_malformed_record_is_a_value_error() -> None:
    assert issubclass(MalformedRecord, ValueError)


def test_record_or_none_logs_hash_never_raw_id() -> None:
    with capture_logs() as logs:
        assert record_or_none(SID, {"user_id": "u", "status": "nope"}, source="test") is None
    assert len(logs) == 1
    assert logs[0]["event"] == BACKEND_MALFORMED
    assert logs[0]["session"] == hash_id(SID)
    assert logs[0]["backend"] == "test"
    assert logs[0]["log_level"] == "warning"
    assert SID not in repr(logs)


def test_record_or_none_passes_good_records_silently() -> None:
    with capture_logs() as logs:
        record = record_or_none(SID, {"user_id": "u", "status": "active"}, source="test")
    assert record is not None
    assert record.session_id == SID
    assert logs == []


def test_expired() -> None:
    record = build_record(SID, {"user_id": "u", "status": "active", "expires_at": 100})
    assert not record.expired(99.9)
    assert record.expired(100)
    assert record.expired(101)
    assert not build_record(SID, {"user_id": "u", "status": "active"}).expired(1e12)


def test_hash_id_is_short_stable_sha256_prefix() -> None:
    assert hash_id("abc") == "ba7816bf8f01"
    assert len(hash_id(SID)) == 12


# -- epoch milliseconds -------------------------------------------------------------

YEAR_3000 = 32503680000


@pytest.mark.parametrize("key", ["expires_at", "issued_at"])
@pytest.mark.parametrize(
    "value", [YEAR_3000 + 1, 1767225600000, "1767225600000", b"1767225600000.5", 1e300]
)
def test_times_after_year_3000_look_like_milliseconds(key: str, value: Any) -> None:
    """A time after 3000-01-01 is malformed, and the problem says it looks like
    milliseconds (written by mistake, it would make a session that never expires)."""
    with pytest.raises(MalformedRecord, match=key) as info:
        build_record(SID, {"user_id": "u", "status": "active", key: value})
    assert "milliseconds" in str(info.value)


@pytest.mark.parametrize("value", [YEAR_3000, YEAR_3000 - 0.5, 1767225600])
def test_times_up_to_year_3000_are_accepted(value: float) -> None:
    record = build_record(SID, {"user_id": "u", "status": "active", "expires_at": value})
    assert record.expires_at == float(value)


def test_milliseconds_are_logged_as_malformed() -> None:
    with capture_logs() as logs:
        raw = {"user_id": "u", "status": "active", "expires_at": 1767225600000}
        assert record_or_none(SID, raw, source="test") is None
    assert [entry["event"] for entry in logs] == [BACKEND_MALFORMED]
    assert "milliseconds" in logs[0]["problem"]
    assert SID not in repr(logs)


def test_other_stored_times_are_checked_too() -> None:
    """``last_seen`` (section 11) is not part of the record, but a store's row holding
    it in milliseconds is malformed all the same."""
    with pytest.raises(MalformedRecord, match=r"last_seen.*milliseconds"):
        build_record(SID, {"user_id": "u", "status": "active", "last_seen": 1767225600000})
    assert build_record(SID, {"user_id": "u", "status": "active", "last_seen": 1767225600})
