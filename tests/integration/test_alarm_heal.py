"""The alarm process's heal over the real PostgreSQL: readings stored in the telemetry table
whose events never reached the process raise and clear their alarms, once, and the group's
delivered ids become the process's positions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from alarms import state
from alarms.heal import reevaluate_from_write_store
from alarms.rules import alarm_id
from iotp.event_shards import telemetry_streams
from iotp.events import AlarmCleared, AlarmRaised, from_fields
from iotp.names import ALARM_EVENTS_STREAM, TELEMETRY_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.alarm_traffic import at, register, store, store_and_evaluate
from tests.support.api_client import AUTH, running_api


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with running_api(settings, relay=False) as client:
        yield client


@pytest.fixture
def conn(database_url: str) -> Iterator[state.Conn]:
    """A write-store connection as the alarm process has it (dict rows, autocommit)."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as found:
        yield found


def alarm_rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT alarm_id, device_id, state, raised_at, value, threshold_low, threshold_high,"
        " cleared_at, cleared_value, clear_reason, updated_at FROM alarms ORDER BY device_id"
    ).fetchall()


def queued_events(db: psycopg.Connection[Any]) -> list[Any]:
    rows = db.execute(
        "SELECT fields FROM outbox WHERE stream = %s ORDER BY id", (ALARM_EVENTS_STREAM,)
    ).fetchall()
    return [from_fields(fields) for (fields,) in rows]


def positions(db: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(db.execute("SELECT stream, last_id FROM alarm_positions").fetchall())


def test_readings_whose_events_were_lost_raise_and_clear_on_a_heal_once(
    api: TestClient, db: psycopg.Connection[Any], conn: state.Conn
) -> None:
    register(api, "seen")
    register(api, "unseen")
    store_and_evaluate(db, conn, "seen", [(1, 70.0), (2, 71.0)])  # a run of two: no alarm yet
    store(db, "seen", [(3, 72.0), (4, 73.0)])  # stored, and their events lost
    store(db, "unseen", [(1, 80.0), (2, 81.0), (3, 82.0)])  # a device the process never heard of
    assert alarm_rows(db) == []

    # Redis lost everything: the group was created again, and was delivered nothing.
    healed = reevaluate_from_write_store(
        conn, {TELEMETRY_EVENTS_STREAM: "0-0"}, chunk_devices=1, batch_rows=1
    )
    assert (healed.devices, healed.raised, healed.cleared) == (2, 2, 0)
    seen, unseen = alarm_rows(db)
    assert seen[1:7] == ("seen", "active", at(3), 72.0, -40.0, 60.0)  # the run went on
    assert unseen[1:7] == ("unseen", "active", at(3), 82.0, -40.0, 60.0)
    # The id comes from the reading, so a heal redone after a crash raises the same alarm.
    position = f"write-store/seen@{at(3).isoformat()}"
    assert seen[0] == alarm_id("range:temp", "seen", position)
    events = queued_events(db)
    assert [type(e) for e in events] == [AlarmRaised, AlarmRaised]
    for event, row in zip(events, (seen, unseen), strict=True):
        assert isinstance(event, AlarmRaised)
        assert (event.alarm_id, event.raised_at, event.value) == (row[0], row[3], row[4])
        assert (event.threshold_low, event.threshold_high) == (row[5], row[6])
        assert event.occurred_at == row[10]  # updated_at: the event's time
    assert positions(db) == {}

    again = reevaluate_from_write_store(conn, {TELEMETRY_EVENTS_STREAM: "0-0"})
    assert (again.raised, again.cleared) == (0, 0)
    assert len(queued_events(db)) == 2 and alarm_rows(db) == [seen, unseen]

    # Back in range, and again only stored: the heal clears with the clear's reading.
    store(db, "seen", [(5, 20.0), (6, 21.0), (7, 22.0)])
    cleared = reevaluate_from_write_store(conn, {TELEMETRY_EVENTS_STREAM: "3-0"})
    assert (cleared.raised, cleared.cleared) == (0, 1)
    row = alarm_rows(db)[0]
    assert row[2:3] + row[7:10] == ("cleared", at(7), 22.0, "back in range")
    clear = queued_events(db)[-1]
    assert isinstance(clear, AlarmCleared) and clear.alarm_id == seen[0]
    assert (clear.cleared_at, clear.value, clear.occurred_at) == (row[7], row[8], row[10])
    assert positions(db) == {TELEMETRY_EVENTS_STREAM: "3-0"}


def test_readings_already_evaluated_change_nothing(
    api: TestClient, db: psycopg.Connection[Any], conn: state.Conn
) -> None:
    register(api, "b1")
    evaluated = store_and_evaluate(db, conn, "b1", [(1, 70.0), (2, 71.0), (3, 72.0), (4, 20.0)])
    assert evaluated.raised == 1
    # Received long before the process last heard of the device: out of the heal's look-back.
    store(db, "b1", [(-100, 99.0)], received=datetime.now(UTC) - timedelta(hours=2))
    before = (
        alarm_rows(db),
        db.execute("SELECT * FROM alarm_evaluation ORDER BY rule_id").fetchall(),
        db.execute("SELECT * FROM alarm_device_seen").fetchall(),
        len(queued_events(db)),
    )

    shards = telemetry_streams(2)
    state.save_position(conn, TELEMETRY_EVENTS_STREAM, "99999-0")
    state.save_position(conn, shards[1], "7-0")
    # A position above what the group was delivered is lowered (the stream was lost and
    # its new ids start lower); a group delivered nothing leaves no position.
    healed = reevaluate_from_write_store(conn, {TELEMETRY_EVENTS_STREAM: "12-0", shards[1]: "0-0"})
    assert (healed.readings, healed.raised, healed.cleared) == (4, 0, 0)
    assert (
        alarm_rows(db),
        db.execute("SELECT * FROM alarm_evaluation ORDER BY rule_id").fetchall(),
        db.execute("SELECT * FROM alarm_device_seen").fetchall(),
        len(queued_events(db)),
    ) == before
    assert positions(db) == {TELEMETRY_EVENTS_STREAM: "12-0"}


def test_a_decommissioned_device_is_not_evaluated(
    api: TestClient, db: psycopg.Connection[Any], conn: state.Conn
) -> None:
    register(api, "old")
    store(db, "old", [(1, 90.0), (2, 91.0), (3, 92.0)])
    assert api.post("/devices/old/decommission", headers=AUTH).status_code == 200
    healed = reevaluate_from_write_store(conn, {})
    assert (healed.devices, healed.readings, healed.raised) == (0, 0, 0)
    assert alarm_rows(db) == []


def test_a_long_history_is_evaluated_in_order_across_batches(
    api: TestClient, db: psycopg.Connection[Any], conn: state.Conn
) -> None:
    """Hundreds of readings of a device never heard of, in batches that split its messages
    anywhere: every run of three breaches raises, every run of three in range clears."""
    register(api, "history")
    cycles = 60
    readings = [(second, 90.0 if second % 6 < 3 else 20.0) for second in range(cycles * 6)]
    # Received a second apart, so that each reading is a message of its own.
    start = datetime.now(UTC) - timedelta(minutes=30)
    for second, temp in readings:
        store(db, "history", [(second, temp)], received=start + timedelta(seconds=second))
    healed = reevaluate_from_write_store(conn, {}, batch_rows=7)
    assert (healed.readings, healed.raised, healed.cleared) == (cycles * 6, cycles, cycles)
    raised = db.execute("SELECT raised_at, cleared_at FROM alarms ORDER BY raised_at").fetchall()
    assert raised == [(at(n * 6 + 2), at(n * 6 + 5)) for n in range(cycles)]
    assert reevaluate_from_write_store(conn, {}).raised == 0
