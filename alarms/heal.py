"""The alarm process's heal: evaluate the stored readings whose events it never applied.

Telemetry events that left Redis before the alarm process applied them (Redis lost the
stream, ingest cut it at its cap, an entry was deleted) still have their readings in the
telemetry table: ingest commits the rows before it publishes the event. The heal evaluates,
in one write-store transaction under the shared rules lock, every stored reading the process
may not have applied, records the raises and clears with their events (outbox), and records
the group's delivered ids as the process's positions. A crash before the commit heals
nothing and the heal runs again; re-running it after the commit raises nothing new.

Which readings: per active device, those received from its last-seen time (the newest
receive time the process applied) less a margin, for events committed out of receive order
(ingest writers, shards); every reading of a device the process never heard of. A reading
at or before its (rule, device)'s newest evaluated reading is late and changes nothing
(:mod:`alarms.rules`), so the ones the process did apply are harmless to evaluate again, and
so are entries redelivered after the heal. Readings older than that, whose events were lost
while a newer one of the same device was applied, are late for the process too and stay
unevaluated. A raise takes its alarm id from the rule, the device and the reading's time
(position ``write-store/<device>``), so a heal redone after a crash raises the same alarm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from alarms import state
from alarms.evaluation import BatchEvaluation

logger = logging.getLogger(__name__)

# How far before a device's last-seen time the heal looks: readings committed in another
# order than they were received (several ingest writers) may be missing just before it.
LAST_SEEN_MARGIN = timedelta(seconds=60)
CHUNK_DEVICES = 200
BATCH_ROWS = 5_000

# Per device, in receive order; look-ups say COLLATE "C" to use the unique key (0005).
_UNEVALUATED = """
SELECT k.device_id, t.received_at, t.ts, t.metric, t.value
FROM unnest(%s::text[], %s::timestamptz[]) WITH ORDINALITY AS k(device_id, since, n)
CROSS JOIN LATERAL (
    SELECT received_at, ts, metric, value FROM telemetry
    WHERE device_id COLLATE "C" = k.device_id AND (k.since IS NULL OR received_at >= k.since)
) AS t
ORDER BY k.n, t.received_at, t.ts, t.metric
"""


@dataclass(frozen=True)
class StoredReading:
    """The metrics a device measured at one time, as the telemetry rows hold them."""

    ts: datetime
    metrics: dict[str, float]


@dataclass(frozen=True)
class StoredMessage:
    """The readings of one device received at one time: a telemetry event's worth."""

    device_id: str
    readings: tuple[StoredReading, ...]
    received_at: datetime

    @property
    def ingested_at(self) -> datetime:
        return self.received_at  # not stored; received_at is what the evaluation uses


@dataclass
class AlarmHealReport:
    devices: int = 0
    readings: int = 0  # telemetry rows evaluated
    raised: int = 0
    cleared: int = 0


def reevaluate_from_write_store(
    conn: state.Conn,
    delivered: Mapping[str, str],
    chunk_devices: int = CHUNK_DEVICES,
    batch_rows: int = BATCH_ROWS,
) -> AlarmHealReport:
    """Evaluate the stored readings the alarm process may have missed, then record
    ``delivered`` (stream -> the group's last-delivered id) as its positions; one transaction.
    """
    report = AlarmHealReport()
    with conn.transaction():
        state.share_rules_lock(conn)
        now = state.database_now(conn)
        devices = _devices(conn)
        report.devices = len(devices)
        for start in range(0, len(devices), chunk_devices):
            chunk = devices[start : start + chunk_devices]
            for batch, rows in _batches(conn, chunk, batch_rows):
                evaluation = BatchEvaluation(conn, now)
                evaluation.apply(batch)
                state.write_events(conn, list(evaluation.events))
                report.readings += rows
                report.raised += evaluation.raised
                report.cleared += evaluation.cleared
        _replace_positions(conn, delivered)
    logger.info(
        "alarms healed from the write store: %s readings of %s devices, %s raised, %s cleared",
        report.readings,
        report.devices,
        report.raised,
        report.cleared,
    )
    return report


def _devices(conn: state.Conn) -> list[tuple[str, datetime | None]]:
    """Every active device, with the time from which its readings are evaluated (None: all).

    A decommissioned device is watched by no rule, so its readings would change nothing.
    """
    rows = conn.execute(
        "SELECT d.device_id, s.last_seen FROM devices d"
        " LEFT JOIN alarm_device_seen s USING (device_id)"
        " WHERE d.status = 'active' ORDER BY d.device_id"
    ).fetchall()
    return [
        (
            row["device_id"],
            None if row["last_seen"] is None else row["last_seen"] - LAST_SEEN_MARGIN,
        )
        for row in rows
    ]


def _batches(
    conn: state.Conn, chunk: list[tuple[str, datetime | None]], batch_rows: int
) -> Iterator[tuple[list[tuple[str, StoredMessage]], int]]:
    """The chunk's readings to evaluate as (position, message) batches of about
    ``batch_rows`` rows, each device's in receive order; with the rows in each batch."""
    batch: list[tuple[str, StoredMessage]] = []
    rows = 0
    for message, count in _messages(conn, chunk):
        batch.append((f"write-store/{message.device_id}", message))
        rows += count
        if rows >= batch_rows:
            yield batch, rows
            batch, rows = [], 0
    if batch:
        yield batch, rows


def _messages(
    conn: state.Conn, chunk: list[tuple[str, datetime | None]]
) -> Iterator[tuple[StoredMessage, int]]:
    """The chunk's stored readings grouped per (device, receive time), with their row count.

    A server-side cursor: a device never heard of may have its whole history to evaluate.
    """
    key: tuple[str, datetime] | None = None
    readings: dict[datetime, dict[str, float]] = {}
    count = 0
    with conn.cursor(name="alarm_heal_readings") as cur:
        cur.execute(_UNEVALUATED, ([d for d, _ in chunk], [since for _, since in chunk]))
        for row in cur:
            found = (row["device_id"], row["received_at"])
            if found != key:
                if key is not None:
                    yield _message(key, readings), count
                key, readings, count = found, {}, 0
            readings.setdefault(row["ts"], {})[row["metric"]] = row["value"]
            count += 1
    if key is not None:
        yield _message(key, readings), count


def _message(
    key: tuple[str, datetime], readings: dict[datetime, dict[str, float]]
) -> StoredMessage:
    device_id, received_at = key
    return StoredMessage(
        device_id,
        tuple(StoredReading(ts, metrics) for ts, metrics in sorted(readings.items())),
        received_at,
    )


def _replace_positions(conn: state.Conn, delivered: Mapping[str, str]) -> None:
    """Record what the group was delivered, lowering a position if need be: after Redis lost a
    stream, its new entries may have ids below the old positions, and would be skipped."""
    for stream, last_id in sorted(delivered.items()):
        if last_id == "0-0":
            conn.execute("DELETE FROM alarm_positions WHERE stream = %s", (stream,))
        else:
            state.save_position(conn, stream, last_id)
