"""What a rebuild keeps of the read models where the write store no longer holds readings.

With IOTP_TELEMETRY_RETENTION_DAYS set, raw telemetry older than the retention is gone, while
the day rollups and the all-time statistics are kept for ever. A rebuild therefore recomputes
only from the first whole day the write store still covers (the *coverage*), and joins it to
what the read store says of the time before:

- count, sum, min and max before the coverage come from the day rollups, which hold them
  exactly: the all-time count, min, max and mean stay exact;
- the instants of the minimum and the maximum, the first reading, and the breaches before
  the coverage cannot be recomputed: they are carried over from the statistics being
  replaced where those agree with the day rollups, else the day of the extreme stands for
  its instant. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from iotp.settings import Settings

StatsRow = tuple[
    str,  # device_id
    str,  # metric
    int,  # count
    float,  # sum
    float,  # min
    datetime,  # min_ts
    float,  # max
    datetime,  # max_ts
    datetime,  # first_ts
    datetime,  # last_ts
    float,  # last_value
    bool,  # last_out_of_range
    int,  # breaches
]


@dataclass(frozen=True)
class Before:
    """One series before the coverage, from the day rollups."""

    count: int
    sum: float
    min: float
    min_day: datetime
    max: float
    max_day: datetime
    first_day: datetime
    last_day: datetime
    last_mean: float


def coverage_start(settings: Settings, now: datetime) -> datetime | None:
    """The first whole UTC day whose readings the write store holds all of; None when it
    keeps every reading (no telemetry retention)."""
    if settings.telemetry_retention_days <= 0:
        return None
    horizon = now.astimezone(UTC) - timedelta(days=settings.telemetry_retention_days)
    day = horizon.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if day == horizon else day + timedelta(days=1)


def joined_stats(
    key: tuple[str, str],
    before: Before | None,
    old: StatsRow | None,
    raw: StatsRow | None,
    coverage: datetime,
) -> StatsRow | None:
    """The series' all-time statistics: the kept time before ``coverage`` joined to the
    write store's readings from it (``raw``); ``old`` is the row being replaced."""
    if before is None:
        return raw
    min_ts = _instant(before.min, before.min_day, old, 4, 5)
    max_ts = _instant(before.max, before.max_day, old, 6, 7)
    first_ts = old[8] if old is not None and old[8] < coverage else before.first_day
    carried_breaches = 0
    if old is not None:
        carried_breaches = max(0, old[12] - (raw[12] if raw is not None else 0))
    if raw is None:
        if old is not None and old[9] < coverage:
            last = (old[9], old[10], old[11])
        else:
            last = (before.last_day, before.last_mean, False)
        return (
            *key,
            before.count,
            before.sum,
            before.min,
            min_ts,
            before.max,
            max_ts,
            first_ts,
            *last,
            carried_breaches,
        )
    # A tie keeps the earlier instant, which is before the coverage.
    low = (before.min, min_ts) if before.min <= raw[4] else (raw[4], raw[5])
    high = (before.max, max_ts) if before.max >= raw[6] else (raw[6], raw[7])
    return (
        *key,
        before.count + raw[2],
        before.sum + raw[3],
        *low,
        *high,
        min(first_ts, raw[8]),
        raw[9],
        raw[10],
        raw[11],
        carried_breaches + raw[12],
    )


def _instant(
    value: float, day: datetime, old: StatsRow | None, value_at: int, instant_at: int
) -> datetime:
    """The instant of an extreme from before the coverage: the old row's, when it names the
    same value on that day, else the start of the day."""
    if old is not None and old[value_at] == value:
        instant = old[instant_at]
        assert isinstance(instant, datetime)
        if day <= instant < day + timedelta(days=1):
            return instant
    return day
