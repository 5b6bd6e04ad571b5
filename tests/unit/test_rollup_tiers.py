"""Pure parts of the rollup tiers: periods, the chart's bucket, and joining kept statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotp.settings import Settings
from read_models.kept import Before, coverage_start, joined_stats
from read_models.retention import expire_before, pack_before
from read_models.rollup_tiers import DAY, HOUR, MINUTE, bucket_for_range

AT = datetime(2026, 12, 7, 13, 45, 30, tzinfo=UTC)
COVERAGE = datetime(2026, 12, 1, tzinfo=UTC)


def test_periods_are_aligned_on_the_epoch() -> None:
    assert MINUTE.period_of(AT) == datetime(2026, 12, 7, 13, tzinfo=UTC)
    week = HOUR.period_of(AT)
    assert week <= AT < week + timedelta(days=7)
    assert week.hour == 0 and (week - datetime(1970, 1, 1, tzinfo=UTC)).days % 7 == 0
    block = DAY.period_of(AT)
    assert block <= AT < block + timedelta(days=32)
    assert (block - datetime(1970, 1, 1, tzinfo=UTC)).days % 32 == 0
    before_1970 = datetime(1969, 12, 31, 23, 59, tzinfo=UTC)
    assert MINUTE.period_of(before_1970) == datetime(1969, 12, 31, 23, tzinfo=UTC)


def test_packing_waits_the_grace_and_expiry_takes_whole_periods() -> None:
    assert pack_before(MINUTE, AT) == datetime(2026, 12, 7, 12, 45, tzinfo=UTC)
    assert pack_before(HOUR, AT) == datetime(2026, 12, 6, 13, tzinfo=UTC)
    assert pack_before(DAY, AT) == datetime(2026, 12, 5, tzinfo=UTC)
    limit = expire_before(MINUTE, AT, 7)
    assert limit == datetime(2026, 11, 30, 13, tzinfo=UTC)
    assert limit <= AT - timedelta(days=7)


@pytest.mark.parametrize(
    ("span", "bucket"),
    [
        (timedelta(hours=1), "1m"),
        (timedelta(days=1), "1m"),
        (timedelta(days=7), "1h"),
        (timedelta(days=31), "1h"),
        (timedelta(days=90), "1d"),
    ],
)
def test_the_chart_reads_days_beyond_a_month(span: timedelta, bucket: str) -> None:
    assert bucket_for_range(span) == bucket


def test_coverage_is_the_first_whole_day_raw_telemetry_still_holds() -> None:
    assert coverage_start(Settings(telemetry_retention_days=0), AT) is None
    assert coverage_start(Settings(telemetry_retention_days=5), AT) == datetime(
        2026, 12, 3, tzinfo=UTC
    )
    midnight = datetime(2026, 12, 7, tzinfo=UTC)
    assert coverage_start(Settings(telemetry_retention_days=1), midnight) == datetime(
        2026, 12, 6, tzinfo=UTC
    )


def _row(
    count: int,
    total: float,
    low: float,
    low_at: datetime,
    high: float,
    high_at: datetime,
    first: datetime,
    last: datetime,
    last_value: float,
    breaches: int,
) -> tuple:  # type: ignore[type-arg]
    return (
        "d",
        "m",
        count,
        total,
        low,
        low_at,
        high,
        high_at,
        first,
        last,
        last_value,
        False,
        breaches,
    )


BEFORE = Before(
    count=10,
    sum=50.0,
    min=1.0,
    min_day=datetime(2026, 11, 20, tzinfo=UTC),
    max=9.0,
    max_day=datetime(2026, 11, 25, tzinfo=UTC),
    first_day=datetime(2026, 11, 10, tzinfo=UTC),
    last_day=datetime(2026, 11, 30, tzinfo=UTC),
    last_mean=5.0,
)


def test_joined_stats_add_the_kept_days_to_the_covered_readings() -> None:
    raw = _row(
        4,
        20.0,
        2.0,
        COVERAGE + timedelta(hours=1),
        12.0,
        COVERAGE + timedelta(hours=2),
        COVERAGE + timedelta(minutes=5),
        COVERAGE + timedelta(days=3),
        7.0,
        1,
    )
    old_min_at = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    old = _row(
        14,
        70.0,
        1.0,
        old_min_at,
        12.0,
        COVERAGE + timedelta(hours=2),
        datetime(2026, 11, 10, 6, tzinfo=UTC),
        COVERAGE + timedelta(days=3),
        7.0,
        3,
    )
    joined = joined_stats(("d", "m"), BEFORE, old, raw, COVERAGE)
    assert joined is not None
    count, total, low, low_at, high, high_at, first, last, last_value, _, breaches = joined[2:]
    assert (count, total, low, high) == (14, 70.0, 1.0, 12.0)
    assert low_at == old_min_at  # the old row names the same extreme on that day
    assert high_at == COVERAGE + timedelta(hours=2)
    assert first == datetime(2026, 11, 10, 6, tzinfo=UTC)
    assert (last, last_value) == (COVERAGE + timedelta(days=3), 7.0)
    assert breaches == 3  # 2 carried over + 1 recomputed


def test_joined_stats_without_an_old_row_or_covered_readings() -> None:
    joined = joined_stats(("d", "m"), BEFORE, None, None, COVERAGE)
    assert joined is not None
    assert joined[2:5] == (10, 50.0, 1.0)
    assert joined[5] == BEFORE.min_day  # no better instant is known
    assert joined[9:11] == (BEFORE.last_day, BEFORE.last_mean)
    assert joined_stats(("d", "m"), None, None, None, COVERAGE) is None
    raw = _row(1, 3.0, 3.0, COVERAGE, 3.0, COVERAGE, COVERAGE, COVERAGE, 3.0, 0)
    assert joined_stats(("d", "m"), None, None, raw, COVERAGE) == raw


def test_a_tie_on_an_extreme_keeps_the_earlier_instant() -> None:
    raw = _row(1, 1.0, 1.0, COVERAGE, 1.0, COVERAGE, COVERAGE, COVERAGE, 1.0, 0)
    joined = joined_stats(("d", "m"), BEFORE, None, raw, COVERAGE)
    assert joined is not None
    assert (joined[4], joined[5]) == (1.0, BEFORE.min_day)
