"""Folding events into deltas of the read models: pure functions, no I/O.

A batch of events becomes one delta per key (device and metric, minute, hour...), which the
store merges with set-based upserts. Every merge is associative and commutative (counts and
sums add, min and max compare, the last value goes to the newest timestamp), so batches may
be applied in any order by any number of aggregators and still converge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from iotp.events import (
    DeviceCredentialsRotated,
    DeviceDecommissioned,
    DeviceRegistered,
    DeviceUpdated,
    Event,
    TelemetryFacts,
    TelemetryRecorded,
)
from iotp.pg_arrays import UNIX_EPOCH_PG_MICROS, pg_micros
from read_models.alarms import AlarmDelta, AlarmEvent, add_alarm_event

DeviceEvent = DeviceRegistered | DeviceUpdated | DeviceDecommissioned | DeviceCredentialsRotated


# Times in the statistics are microseconds since 2000-01-01 UTC, PostgreSQL's own clock: one
# conversion a reading instead of four a series when the store sends them, and integers
# compare faster than aware datetimes.
Micros = int


@dataclass(slots=True)
class StatDelta:
    count: int
    sum: float
    min: float
    min_ts: Micros
    max: float
    max_ts: Micros
    first_ts: Micros
    last_ts: Micros
    last_value: float
    last_out_of_range: bool
    breaches: int


@dataclass(slots=True)
class BucketDelta:
    count: int
    sum: float
    min: float
    max: float


@dataclass(slots=True)
class Activity:
    last_seen: datetime
    readings: int


SeriesKey = tuple[str, str]
# Buckets are keyed by whole minutes since the Unix epoch, not by datetimes: building and
# hashing a datetime per value was about an eighth of the fold. The store sends the minutes
# as they are (iotp.pg_arrays.unix_minute_micros); PostgreSQL merges them into hours and days.
Minute = int
BucketKey = tuple[str, str, Minute]


@dataclass
class Deltas:
    stats: dict[SeriesKey, StatDelta] = field(default_factory=dict)
    minute: dict[BucketKey, BucketDelta] = field(default_factory=dict)
    fleet: dict[Minute, int] = field(default_factory=dict)
    activity: dict[str, Activity] = field(default_factory=dict)
    device_events: list[DeviceEvent] = field(default_factory=list)
    alarms: dict[UUID, AlarmDelta] = field(default_factory=dict)

    def add(self, event: Event | TelemetryFacts) -> None:
        if isinstance(event, TelemetryRecorded | TelemetryFacts):
            self._add_telemetry(event)
        elif isinstance(event, DeviceEvent):
            self.device_events.append(event)
        elif isinstance(event, AlarmEvent):
            add_alarm_event(self.alarms, event)

    def _add_telemetry(self, event: TelemetryRecorded | TelemetryFacts) -> None:
        # The merges are written out here, not as methods of the deltas: two method calls a
        # value were a third of the fold's time. tests/integration/test_projection_exactness.py
        # holds the result to a value-by-value reference fold.
        device = event.device_id
        stats, minutes, fleet = self.stats, self.minute, self.fleet
        points = 0
        for reading in event.readings:
            # Whatever tzinfo the timestamp carries (pydantic's own, or msgspec's UTC): the
            # subtraction gives the instant, and integers key and compare in C.
            ts = pg_micros(reading.ts)
            minute = (ts - UNIX_EPOCH_PG_MICROS) // 60_000_000
            breaching = reading.out_of_range
            metrics = reading.metrics
            points += len(metrics)
            for metric, value in metrics.items():
                out = bool(breaching) and metric in breaching
                series = (device, metric)
                stat = stats.get(series)
                if stat is None:
                    stats[series] = StatDelta(
                        1, value, value, ts, value, ts, ts, ts, value, out, int(out)
                    )
                else:
                    stat.count += 1
                    stat.sum += value
                    # Ties keep the earliest timestamp, so that the result does not depend
                    # on arrival order.
                    if value <= stat.min and (value < stat.min or ts < stat.min_ts):
                        stat.min, stat.min_ts = value, ts
                    if value >= stat.max and (value > stat.max or ts < stat.max_ts):
                        stat.max, stat.max_ts = value, ts
                    if ts < stat.first_ts:
                        stat.first_ts = ts
                    if ts >= stat.last_ts:
                        stat.last_ts, stat.last_value, stat.last_out_of_range = ts, value, out
                    stat.breaches += out
                key = (device, metric, minute)
                bucket = minutes.get(key)
                if bucket is None:
                    minutes[key] = BucketDelta(1, value, value, value)
                else:
                    bucket.count += 1
                    bucket.sum += value
                    if value < bucket.min:
                        bucket.min = value
                    if value > bucket.max:
                        bucket.max = value
            fleet[minute] = fleet.get(minute, 0) + len(metrics)
        seen = event.received_at or event.ingested_at
        activity = self.activity.get(device)
        if activity is None:
            self.activity[device] = Activity(seen, points)
        else:
            activity.last_seen = max(activity.last_seen, seen)
            activity.readings += points


def minute_of(ts: datetime) -> Minute:
    """The minute ``ts`` falls in, in whole minutes since the Unix epoch, as the fold keys
    it: exact (no float), and the floor before 1970 too."""
    return (pg_micros(ts) - UNIX_EPOCH_PG_MICROS) // 60_000_000


def fold(events: Iterable[Event | TelemetryFacts]) -> Deltas:
    deltas = Deltas()
    for event in events:
        deltas.add(event)
    return deltas
