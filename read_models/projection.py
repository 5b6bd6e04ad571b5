"""Folding events into deltas of the read models: pure functions, no I/O.

A batch of events becomes flat columns of its metric values (device, metric, ts, value,
out of range: one entry per value, in the batch's order), which the store aggregates and
merges in one statement per batch (:func:`read_models.store.apply_deltas`), plus small
per-device and per-event parts. Every merge is associative and commutative (counts and sums
add, min and max compare, the last value goes to the newest timestamp), so batches may be
applied in any order by any number of aggregators and still converge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
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
from read_models.alarms import AlarmDelta, AlarmEvent, add_alarm_event

DeviceEvent = DeviceRegistered | DeviceUpdated | DeviceDecommissioned | DeviceCredentialsRotated


@dataclass(slots=True)
class Activity:
    last_seen: datetime
    readings: int


@dataclass(slots=True)
class MetricValues:
    """A batch's metric values as columns, one entry per value in the batch's order.

    Built with a few C-level list extensions per reading: folding value by value into
    per-key Python objects, then dumping those, was most of an aggregator's time.
    """

    device: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    ts: list[datetime] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    out_of_range: list[bool] = field(default_factory=list)


@dataclass
class Deltas:
    values: MetricValues = field(default_factory=MetricValues)
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
        device = event.device_id
        values = self.values
        points = 0
        for reading in event.readings:
            metrics = reading.metrics
            count = len(metrics)
            points += count
            values.device.extend(repeat(device, count))
            values.metric.extend(metrics)
            values.ts.extend(repeat(reading.ts, count))
            values.value.extend(metrics.values())
            breaching = reading.out_of_range
            if breaching:
                values.out_of_range.extend([metric in breaching for metric in metrics])
            else:
                values.out_of_range.extend(repeat(False, count))
        seen = event.received_at or event.ingested_at
        activity = self.activity.get(device)
        if activity is None:
            self.activity[device] = Activity(seen, points)
        else:
            activity.last_seen = max(activity.last_seen, seen)
            activity.readings += points


def fold(events: Iterable[Event | TelemetryFacts]) -> Deltas:
    deltas = Deltas()
    for event in events:
        deltas.add(event)
    return deltas
