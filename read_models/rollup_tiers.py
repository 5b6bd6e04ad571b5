"""The rollup tiers (minute, hour, day): their layout, and the SQL that reads them.

Each tier is kept in three tables: ``_recent``, one row per bucket, which the aggregators
upsert; and the one the retention job moves buckets into once they are past the tier's grace.
On plain PostgreSQL that is ``_packed``, one row per period holding that period's buckets as
arrays (read_models/migrations/0050_rollup_tiers.sql); with TimescaleDB it is
``_columnar``, one row per bucket with its values as scaled integers, in a hypertable
compressed by device (0070, 0080 and 0090). The other one stays empty (or, on a read store
that gained TimescaleDB's layout later, holds what was packed before, until it expires). Readers
merge all three, since a late reading can put a bucket in two of them for a while.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

BucketName = Literal["1m", "1h", "1d"]
PARTS = ("recent", "packed", "columnar")  # a tier's tables: read_models.rollup_<tier>_<part>
TierName = Literal["minute", "hour", "day"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Tier:
    name: TierName  # its tables are read_models.rollup_<name>_<part>, for each of PARTS
    bucket: timedelta
    slots: int  # buckets per packed period
    # Buckets older than this are packed, into a period that may still be filling (a row
    # merged again at the next rounds): late readings are rare past it, and merge when
    # they come.
    grace: timedelta

    @property
    def period(self) -> timedelta:
        return self.bucket * self.slots

    @property
    def recent(self) -> str:
        return f"read_models.rollup_{self.name}_recent"

    @property
    def packed(self) -> str:
        return f"read_models.rollup_{self.name}_packed"

    @property
    def columnar(self) -> str:
        return f"read_models.rollup_{self.name}_columnar"

    @property
    def view(self) -> str:
        return f"read_models.rollup_{self.name}"

    def bucket_of(self, at: datetime) -> datetime:
        return EPOCH + (at - EPOCH) // self.bucket * self.bucket

    def period_of(self, at: datetime) -> datetime:
        """The start of the packed period ``at`` falls in (periods are aligned on the epoch)."""
        return EPOCH + (at - EPOCH) // self.period * self.period

    def buckets_sql(self, where_recent: str, where_packed: str, one_series: bool = False) -> str:
        """One row per bucket (device_id, metric, bucket, count, sum, min, max) of the three
        tables, merged; ``where_recent`` filters the two of one row per bucket (on bucket),
        ``where_packed`` the packed one (on period).

        ``one_series``: the filters select one device's one metric, so buckets are grouped
        by time alone (hashing the names too was a third of a week of minutes' time).
        """
        step = int(self.bucket.total_seconds())
        keys = "bucket" if one_series else "device_id, metric, bucket"
        names = (
            "min(device_id) AS device_id, min(metric) AS metric"
            if one_series
            else ("device_id, metric")
        )
        return f"""
SELECT {names}, bucket, sum(count)::bigint AS count, sum(sum) AS sum,
       min(min) AS min, max(max) AS max
FROM (
    SELECT device_id, metric, bucket, count, sum, min, max FROM {self.recent}
    WHERE {where_recent}
    UNION ALL
    SELECT p.device_id, p.metric, p.period + (u.i - 1) * INTERVAL '{step} seconds', u.c, u.s,
           u.lo, u.hi
    FROM {self.packed} p,
         unnest(p.counts, p.sums, p.mins, p.maxs) WITH ORDINALITY AS u(c, s, lo, hi, i)
    WHERE u.c IS NOT NULL AND {where_packed}
    UNION ALL
    SELECT device_id, metric, bucket, count, read_models.unscaled(sum_scaled, scale, sum),
           read_models.unscaled(min_scaled, scale, min),
           read_models.unscaled(max_scaled, scale, max)
    FROM {self.columnar}
    WHERE {where_recent}
) AS b
GROUP BY {keys}"""  # noqa: S608 - constant names and integers only


# Periods: an hour of minutes, a week of hours (measured: 30 bytes a bucket, against 45 for a
# day of hours, with the row's own cost spread over more buckets), 32 days of days. Any
# fixed width aligned on the epoch works: readers never see the periods.
MINUTE = Tier("minute", timedelta(minutes=1), 60, grace=timedelta(hours=1))
HOUR = Tier("hour", timedelta(hours=1), 168, grace=timedelta(days=1))
DAY = Tier("day", timedelta(days=1), 32, grace=timedelta(days=2))
TIERS = (MINUTE, HOUR, DAY)
BY_BUCKET: dict[BucketName, Tier] = {"1m": MINUTE, "1h": HOUR, "1d": DAY}
BY_SOURCE: dict[str, Tier] = {tier.name: tier for tier in TIERS}


def bucket_for_range(span: timedelta) -> BucketName:
    """The bucket a chart of ``span`` reads: minutes up to a day, hours up to a month (31
    days), days beyond (the minute and hour tiers may not reach that far back)."""
    if span <= timedelta(days=1):
        return "1m"
    return "1h" if span <= timedelta(days=31) else "1d"


def range_sql(tier: Tier, device_filter: str, one_series: bool = False) -> str:
    """``tier``'s buckets of the devices ``device_filter`` selects (a condition on device_id
    with its own parameters), in [%(start)s, %(end)s), by bucket.

    The packed half is narrowed by period first, so that its index finds the few periods
    that can hold the range.
    """
    return tier.buckets_sql(
        f"{device_filter} AND bucket >= %(start)s AND bucket < %(end)s",
        f"{device_filter} AND p.period > %(start)s - INTERVAL '{int(tier.period.total_seconds())}"
        " seconds' AND p.period < %(end)s AND p.period + (u.i - 1) * INTERVAL"
        f" '{int(tier.bucket.total_seconds())} seconds' >= %(start)s AND p.period + (u.i - 1)"
        f" * INTERVAL '{int(tier.bucket.total_seconds())} seconds' < %(end)s",
        one_series,
    )
