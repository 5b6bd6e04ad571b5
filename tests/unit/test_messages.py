"""Message contracts, credentials and settings: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr, ValidationError

from command_api.credentials import hash_password, password_from_seed, verify_password
from iotp.commands import RegisterDevice, UpdateDevice
from iotp.errors import redact_url
from iotp.events import (
    DeviceRegistered,
    RecordedReading,
    TelemetryRecorded,
    UndecodableEvent,
    from_fields,
    to_fields,
)
from iotp.model import MetricSpec
from iotp.settings import Settings, token_problem


def test_events_round_trip_through_stream_fields() -> None:
    events = [
        DeviceRegistered(
            device_id="d1",
            name="n",
            kind="k",
            metrics=(MetricSpec(name="t", unit="C", min=0, max=1),),
        ),
        TelemetryRecorded(
            device_id="d1",
            readings=(
                RecordedReading(
                    ts=datetime(2026, 1, 1, tzinfo=UTC), metrics={"t": 2.5}, out_of_range=("t",)
                ),
            ),
            ingested_at=datetime.now(UTC),
        ),
    ]
    for event in events:
        fields = to_fields(event)
        assert all(isinstance(v, str) for v in fields.values())
        assert from_fields(fields) == event
        as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
        assert from_fields(as_bytes) == event


def test_events_are_immutable() -> None:
    event = DeviceRegistered(device_id="d1", name="n", kind="k")
    with pytest.raises(ValidationError):
        event.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields",
    [
        {"schema_version": "99", "data": "{}"},
        {"schema_version": "1", "data": "not json"},
        {"schema_version": "1", "data": '{"type": "Nope", "device_id": "d"}'},
        {"schema_version": "1"},
    ],
)
def test_undecodable_entries_raise_one_error_type(fields: dict[str, str]) -> None:
    with pytest.raises(UndecodableEvent):
        from_fields(fields)


def test_update_must_change_something() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        UpdateDevice(device_id="d1")
    assert UpdateDevice.model_validate({"device_id": "d1", "location": None}).changed_fields() == (
        "location",
    )


def test_register_accepts_unicode_names_but_not_control_characters() -> None:
    assert RegisterDevice(name="Küche – Thermostat 🌡", kind="thermostat").name.startswith("K")
    with pytest.raises(ValidationError):
        RegisterDevice(name="a\u0007b", kind="k")


def test_password_hash_is_mosquitto_format_and_verifies() -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("$7$")
    assert verify_password("s3cret", hashed)
    assert not verify_password("other", hashed)
    assert not verify_password("s3cret", "garbage")


def test_password_from_seed_depends_on_seed_and_pepper() -> None:
    assert password_from_seed(b"s", b"p") == password_from_seed(b"s", b"p")
    assert password_from_seed(b"s", b"p") != password_from_seed(b"s", b"q")
    assert password_from_seed(b"s", b"p") != password_from_seed(b"t", b"p")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (None, "not set"),
        ("", "not set"),
        ("changeme", "placeholder"),
        ("short-token", "shorter"),
        ("a-long-enough-random-token", None),
    ],
)
def test_token_problem(token: str | None, problem: str | None) -> None:
    found = token_problem(SecretStr(token) if token is not None else None)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_settings_read_the_iotp_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTP_DATABASE_URL", "postgresql://db:5432/x")
    monkeypatch.setenv("IOTP_TIMESCALEDB", "off")
    settings = Settings()
    assert settings.database_url == "postgresql://db:5432/x"
    assert settings.timescaledb == "off"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.mqtt_url == "mqtt://localhost:1883"


def test_redact_url_hides_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
