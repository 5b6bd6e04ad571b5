"""What `iotp status` reports: ingest counters and idle sessions, streams, the outbox backlog.

An operator tool: unlike the read side it may read the write store (the outbox backlog).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from command_api.outbox import OUTBOX_BACKLOG_SQL
from iotp.db import connect
from iotp.event_shards import event_streams
from iotp.names import (
    ALARM_EVENTS_STREAM,
    ALARM_RULE_EVENTS_STREAM,
    TELEMETRY_DEADLETTER_STREAM,
    WEBHOOK_EVENTS_STREAM,
)
from iotp.redis_client import ingest_sessions, ingest_stats, redis_for, redis_unavailable
from iotp.settings import Settings
from read_models.health import loss_health

# Each ingest counter, and the heading that says what it counts: a message may carry several
# readings, and a reading several values (one metric at one time), so the units differ.
INGEST_COLUMNS = {
    "received": "messages received",
    "stored": "values stored",
    "duplicates": "duplicate values",
    "deadletters": "dead letters",
    "batches": "batches",
    "last_batch_ms": "last batch ms",
}


def collect_status(settings: Settings) -> dict[str, Any]:
    client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5, decode_responses=True
    )
    names = (
        *event_streams(settings.event_shards),
        ALARM_EVENTS_STREAM,
        ALARM_RULE_EVENTS_STREAM,
        WEBHOOK_EVENTS_STREAM,
        TELEMETRY_DEADLETTER_STREAM,
    )
    try:
        ingest = ingest_stats(client)
        sessions = ingest_sessions(client, settings.ingest_live_seconds)
        streams = {name: client.xlen(name) for name in names}
        losses = loss_health(client, shards=settings.event_shards).model_dump(mode="json")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise redis_unavailable(settings.redis_url, exc) from exc
    finally:
        client.close()
    with connect(settings.database_url) as conn:
        row = conn.execute(OUTBOX_BACKLOG_SQL).fetchone()
    return {
        "ingest": ingest,
        "disconnected_ingest_sessions": [s for s in sessions if not s["connected"]],
        "streams": streams,
        "losses": losses,
        "outbox_backlog": row[0] if row else None,
    }


def render_status(report: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="ingest processes")
    table.add_column("client id")
    for heading in (*INGEST_COLUMNS.values(), "updated s ago"):
        table.add_column(heading, justify="right")
    now = time.time()
    for client_id, values in sorted(report["ingest"].items()):
        table.add_row(
            client_id,
            *(str(values.get(key, "")) for key in INGEST_COLUMNS),
            f"{now - float(values.get('updated_at', now)):.0f}",
        )
    if report["ingest"]:
        console.print(table)
    else:
        console.print("no ingest process reported in the last 2 minutes")
    if report["disconnected_ingest_sessions"]:
        console.print(_disconnected_sessions(report["disconnected_ingest_sessions"]))
    streams = Table(title="streams")
    streams.add_column("stream")
    streams.add_column("entries", justify="right")
    for name, length in report["streams"].items():
        streams.add_row(name, str(length))
    console.print(streams)
    console.print(f"outbox backlog: {report['outbox_backlog']}")
    _print_losses(console, report["losses"])


def _disconnected_sessions(sessions: list[dict[str, Any]]) -> Table:
    """Sessions whose share of the telemetry waits at the broker for an instance to return."""
    table = Table(
        title="ingest sessions not connected: the broker keeps their share"
        " (until the instance returns, or `iotp ingest --retire CLIENT_ID`)"
    )
    table.add_column("client id", no_wrap=True)
    for heading in ("share group", "last seen", "stopped cleanly", "expires"):
        table.add_column(heading)
    for session in sessions:
        table.add_row(
            session["client_id"],
            session["share_group"] or "(plain)",
            f"{session['seen_seconds_ago']:.0f}s ago",
            "yes" if session["stopped_at"] else "no (crashed?)",
            session["expires_at"][:10],
        )
    return table


def _print_losses(console: Console, losses: dict[str, Any]) -> None:
    """Events cut from the stream, heals, dropped dead letters and broker drops; alerts last."""
    cap, healing, broker = losses["stream_cap"], losses["healing"], losses["broker"]
    console.print(
        f"telemetry stream cap: {cap['cap'] or '?'} entries; {cap['entries_cut']} events cut"
        f" before every group read them; {cap['unhealed_cuts']} cuts not healed yet;"
        f" {healing['heals']} heals from the write store"
    )
    console.print(f"dead letters dropped at the cap: {losses['deadletter_stream']['trimmed']}")
    if broker["reported"]:
        console.print(
            f"broker: {broker['messages_dropped']} messages dropped since it started,"
            f" {broker['stored_messages']} stored, {broker['clients_disconnected']}"
            " persistent sessions disconnected"
        )
    else:
        console.print("broker counters: not reported by any ingest process")
    for alert in losses["alerts"]:
        console.print(
            f"{alert['level']}: {alert['message']}",
            style="bold red" if alert["level"] == "error" else "yellow",
            markup=False,
        )
