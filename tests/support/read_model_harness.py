"""Read models as the tests see them, and the truth to compare them with."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC
from typing import Any

import psycopg
import pytest

from tests.support.waiting import wait_for

Models = dict[str, dict[Any, tuple[Any, ...]]]


def read_models(db: psycopg.Connection[Any]) -> Models:
    """Every read model table, keyed by its primary key."""

    def table(sql: str, key: int) -> dict[Any, tuple[Any, ...]]:
        return {tuple(r[:key]): tuple(r[key:]) for r in db.execute(sql).fetchall()}

    return {
        "metric_stats": table(
            "SELECT device_id, metric, count, sum, min, min_ts, max, max_ts, first_ts, last_ts,"
            " last_value, last_out_of_range, breaches FROM read_models.metric_stats",
            2,
        ),
        "rollup_minute": table(
            "SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_minute",
            3,
        ),
        "rollup_hour": table(
            "SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_hour", 3
        ),
        "rollup_day": table(
            "SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_day", 3
        ),
        "fleet_minute": table("SELECT bucket, readings FROM read_models.fleet_minute", 1),
        "device_activity": table(
            "SELECT device_id, last_seen, readings FROM read_models.device_activity", 1
        ),
        "devices": table(
            "SELECT device_id, name, kind, lat, lon, metadata, metrics, status, registered_at,"
            " updated_at, decommissioned_at FROM read_models.devices",
            1,
        ),
    }


def from_write_store(db: psycopg.Connection[Any]) -> Models:
    """The same models computed from scratch in Python from the write tables."""
    ranges: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    devices = {}
    for row in db.execute(
        "SELECT device_id, name, kind, lat, lon, metadata, metrics, status, created_at,"
        " updated_at, decommissioned_at FROM devices"
    ).fetchall():
        devices[(row[0],)] = tuple(row[1:])
        for spec in row[6]:
            ranges[(row[0], spec["name"])] = (spec.get("min"), spec.get("max"))
    rows = db.execute(
        "SELECT device_id, metric, ts, value, received_at FROM telemetry ORDER BY ts"
    ).fetchall()
    stats: dict[Any, list[Any]] = {}
    minute: dict[Any, list[Any]] = {}
    hour: dict[Any, list[Any]] = {}
    day: dict[Any, list[Any]] = {}
    fleet: dict[Any, int] = defaultdict(int)
    activity: dict[Any, list[Any]] = {}

    def out_of_range(device: str, metric: str, value: float) -> bool:
        low, high = ranges.get((device, metric), (None, None))
        return (low is not None and value < low) or (high is not None and value > high)

    for device, metric, ts, value, received in rows:
        breach = out_of_range(device, metric, value)
        s = stats.get((device, metric))
        if s is None:
            stats[(device, metric)] = [
                1,
                value,
                value,
                ts,
                value,
                ts,
                ts,
                ts,
                value,
                breach,
                int(breach),
            ]
        else:
            s[0] += 1
            s[1] += value
            if value < s[2] or (value == s[2] and ts < s[3]):
                s[2], s[3] = value, ts
            if value > s[4] or (value == s[4] and ts < s[5]):
                s[4], s[5] = value, ts
            s[6] = min(s[6], ts)
            if ts >= s[7]:
                s[7], s[8], s[9] = ts, value, breach
            s[10] += breach
        for buckets, trunc in (
            (minute, ts.replace(second=0, microsecond=0)),
            (hour, ts.replace(minute=0, second=0, microsecond=0)),
            (day, ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)),
        ):
            b = buckets.get((device, metric, trunc))
            if b is None:
                buckets[(device, metric, trunc)] = [1, value, value, value]
            else:
                b[0] += 1
                b[1] += value
                b[2] = min(b[2], value)
                b[3] = max(b[3], value)
        fleet[(ts.replace(second=0, microsecond=0),)] += 1
        a = activity.get((device,))
        activity[(device,)] = [received, 1] if a is None else [max(a[0], received), a[1] + 1]
    return {
        "metric_stats": {k: tuple(v) for k, v in stats.items()},
        "rollup_minute": {k: tuple(v) for k, v in minute.items()},
        "rollup_hour": {k: tuple(v) for k, v in hour.items()},
        "rollup_day": {k: tuple(v) for k, v in day.items()},
        "fleet_minute": {k: (v,) for k, v in fleet.items()},
        "device_activity": {k: tuple(v) for k, v in activity.items()},
        "devices": devices,
    }


def assert_models_equal(actual: Models, expected: Models) -> None:
    for name in expected:
        missing = set(expected[name]) - set(actual[name])
        extra = set(actual[name]) - set(expected[name])
        assert not missing and not extra, (name, sorted(missing)[:5], sorted(extra)[:5])
        wrong = {k: (actual[name][k], v) for k, v in expected[name].items() if actual[name][k] != v}
        assert not wrong, (name, list(wrong.items())[:5])


def wait_converged(
    db: psycopg.Connection[Any], timeout: float = 60, interval: float = 0.2
) -> Models:
    """Wait until every read model equals a recompute from the write store; when it does not
    in time, fail with what differs."""

    def same() -> Models | None:
        expected = from_write_store(db)
        try:
            assert_models_equal(read_models(db), expected)
        except AssertionError:
            return None
        return expected

    try:
        result: Models = wait_for(same, timeout=timeout, interval=interval)
    except pytest.fail.Exception:
        assert_models_equal(read_models(db), from_write_store(db))  # says what differs
        raise
    return result


# The alarm read model against the write store's alarms table: every column both have, the
# state included (derived from the times in the read model, recorded in the write store).
ALARM_COLUMNS = (
    "device_id",
    "rule_id",
    "metric",
    "condition",
    "severity",
    "state",
    "raised_at",
    "value",
    "threshold_low",
    "threshold_high",
    "acknowledged_by",
    "acknowledged_at",
    "note",
    "cleared_at",
    "cleared_value",
    "clear_reason",
    "updated_at",
)
AlarmRows = dict[Any, tuple[Any, ...]]


def _alarm_rows(db: psycopg.Connection[Any], table: str) -> AlarmRows:
    sql = f"SELECT alarm_id, {', '.join(ALARM_COLUMNS)} FROM {table}"
    return {row[0]: tuple(row[1:]) for row in db.execute(sql.encode()).fetchall()}


def alarm_rows_read(db: psycopg.Connection[Any]) -> AlarmRows:
    """read_models.alarms by alarm id (rows whose raise has not arrived included)."""
    return _alarm_rows(db, "read_models.alarms")


def alarm_rows_written(db: psycopg.Connection[Any]) -> AlarmRows:
    """The write store's alarms table by alarm id: what the read model must show."""
    return _alarm_rows(db, "alarms")


def assert_alarms_equal(actual: AlarmRows, expected: AlarmRows) -> None:
    missing, extra = set(expected) - set(actual), set(actual) - set(expected)
    assert not missing and not extra, ("alarms", sorted(missing)[:5], sorted(extra)[:5])
    wrong = {
        alarm_id: {
            column: (got, want)
            for column, got, want in zip(ALARM_COLUMNS, actual[alarm_id], row, strict=True)
            if got != want
        }
        for alarm_id, row in expected.items()
        if actual[alarm_id] != row
    }
    assert not wrong, ("alarms: (read model, write store)", list(wrong.items())[:5])


def wait_alarms_converged(
    db: psycopg.Connection[Any], timeout: float = 60, interval: float = 0.2
) -> AlarmRows:
    """Wait until read_models.alarms equals the write store's alarms; when it does not in
    time, fail with what differs."""

    def same() -> list[AlarmRows]:  # a list, so that "no alarms on either side" is truthy
        expected = alarm_rows_written(db)
        return [expected] if alarm_rows_read(db) == expected else []

    try:
        (result,) = wait_for(same, timeout=timeout, interval=interval)
    except pytest.fail.Exception:
        assert_alarms_equal(alarm_rows_read(db), alarm_rows_written(db))  # says what differs
        raise
    rows: AlarmRows = result
    return rows
