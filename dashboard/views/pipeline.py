"""Pipeline: ingest counters, dead letters, consumer groups and how far behind the read side is,
the broker's own counters, and what the streams' caps trimmed; anything lost is shown first."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.data import pipeline_report
from dashboard.refresh import refresh_interval
from read_models.health import BrokerHealth, GroupHealth, PipelineHealth

# Each ingest counter (a key of the snapshot `iotp status` also reads), its heading and what
# it counts: a message carries one or more readings and a reading one value per metric, so
# messages and values differ several-fold.
INGEST_COLUMNS = {
    "received": ("messages received", "MQTT messages taken from the broker"),
    "stored": ("values stored", "Values newly stored, each one metric at one timestamp"),
    "duplicates": ("duplicate values", "Values skipped as already stored (redeliveries)"),
    "deadletters": (
        "dead letters",
        "Dead-letter entries: one per rejected message, or per problem of a reading"
        " rejected from an array payload",
    ),
    "batches": ("batches", "Batches committed"),
}
RATE_COLUMN = "messages/s"

st.title("Pipeline")


@st.fragment(run_every=refresh_interval())
def health() -> None:
    report = pipeline_report()
    if report is None:
        return
    for alert in report.alerts:
        (st.error if alert.level == "error" else st.warning)(alert.message)
    _tiles(report)
    if report.replica is not None:
        st.subheader("Read replica")
        _replica(report)
    st.subheader("Ingest")
    _ingest(report.ingest)
    st.subheader("Broker")
    _broker(report.broker)
    st.subheader("Stream caps")
    _stream_caps(report)
    st.subheader("Consumer groups")
    st.dataframe(
        pd.DataFrame([g.model_dump() for g in report.groups]), hide_index=True, width="stretch"
    )
    st.caption("What each group's consumers did, in all")
    st.dataframe(
        pd.DataFrame([{"group": name, **c.model_dump()} for name, c in report.consumers.items()]),
        hide_index=True,
        width="stretch",
    )
    st.subheader("Access")
    _access(report)
    st.subheader("Streams")
    st.dataframe(
        pd.DataFrame([{"stream": k, "entries": v} for k, v in report.streams.items()]),
        hide_index=True,
        width="stretch",
    )
    st.subheader("Latest dead letters")
    if report.latest_deadletters:
        frame = pd.DataFrame(report.latest_deadletters)
        st.dataframe(
            frame[
                [c for c in ("received_at", "topic", "reason", "detail", "payload") if c in frame]
            ],
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("None.")


def _tiles(report: PipelineHealth) -> None:
    cols = st.columns(4)
    cols[0].metric("Dead letters", f"{report.deadletters:,}", border=True)
    cols[1].metric(
        "Outbox backlog",
        "?" if report.outbox_backlog is None else f"{report.outbox_backlog:,}",
        border=True,
        help="Device events committed but not yet on the stream",
    )
    ages = [
        g.newest_event_age_seconds for g in report.groups if g.newest_event_age_seconds is not None
    ]
    cols[2].metric(
        "Newest applied event", f"{min(ages):.1f} s ago" if ages else "none", border=True
    )
    waiting = _events_waiting(report.groups)
    cols[3].metric(
        "Events waiting",
        "?" if waiting is None else f"{waiting:,}",
        border=True,
        help="Lag plus pending entries over every consumer group (? while a lag is unknown)",
    )


def _broker(broker: BrokerHealth) -> None:
    if not broker.reported:
        st.info(
            broker.error or "No ingest process has reported the broker's counters ($SYS) recently."
        )
        return
    # Highlighted (red delta) when the count grew since the previous refresh; the alerts
    # above say so while it grew in the last minutes.
    before = st.session_state.get("previous_dropped")
    st.session_state["previous_dropped"] = broker.messages_dropped
    grew = before is not None and (broker.messages_dropped or 0) > before
    cols = st.columns(4)
    cols[0].metric(
        "Messages dropped",
        f"{broker.messages_dropped or 0:,}",
        delta=(broker.messages_dropped or 0) - before if grew and before is not None else None,
        delta_color="inverse",
        border=True,
        help="QoS 1 messages the broker dropped because a subscriber's queue was full,"
        " since the broker started ($SYS/broker/publish/messages/dropped)",
    )
    cols[1].metric(
        "Messages stored",
        _count(broker.stored_messages),
        border=True,
        help="Messages the broker holds: queued for sessions, retained, in flight",
    )
    cols[2].metric("Clients connected", _count(broker.clients_connected), border=True)
    cols[3].metric(
        "Sessions disconnected",
        _count(broker.clients_disconnected),
        border=True,
        help="Persistent sessions whose client is not connected: the broker queues for them",
    )


def _stream_caps(report: PipelineHealth) -> None:
    cap, healing, dead = report.stream_cap, report.healing, report.deadletter_stream
    cols = st.columns(4)
    cols[0].metric(
        "Events cut unread",
        f"{cap.entries_cut:,}",
        border=True,
        help=f"Telemetry events trimmed at the stream's cap ({_count(cap.cap)} entries,"
        " IOTP_TELEMETRY_STREAM_MAXLEN) before every consumer group read them",
    )
    cols[1].metric(
        "Cuts not healed",
        f"{cap.unhealed_cuts:,}",
        border=True,
        help="Cuts whose events the read models still miss: the aggregators recompute the"
        " read models from the write store once the cuts stop",
    )
    cols[2].metric(
        "Heals",
        f"{healing.heals:,}",
        border=True,
        help=healing.last_heal_reason or "Read models recomputed after a gap in the stream",
    )
    cols[3].metric(
        "Dead letters dropped",
        f"{dead.trimmed:,}",
        border=True,
        help=f"Dead letters trimmed at the dead-letter stream's cap ({_count(dead.cap)}"
        " entries, IOTP_DEADLETTER_STREAM_MAXLEN)",
    )


def _replica(report: PipelineHealth) -> None:
    replica = report.replica
    if replica is None:
        return
    cols = st.columns(4)
    cols[0].metric("Replica", replica.url_host, border=True, help="The database read here")
    cols[1].metric(
        "Replica caught up",
        ("yes" if replica.caught_up else "no")
        + (" (replay paused)" if replica.replay_paused else ""),
        border=True,
        help="It has replayed all the changes it received from the primary",
    )
    cols[2].metric(
        "Replay delay",
        _seconds(replica.replay_delay_seconds),
        border=True,
        help="Since the last change it replayed, while it has more to replay (0 when caught up)",
    )
    cols[3].metric(
        "Read lag",
        _seconds(report.read_lag_seconds),
        border=True,
        help="The aggregators' delay (the oldest event not applied) plus the replay delay",
    )


def _access(report: PipelineHealth) -> None:
    auth = report.auth
    row = st.columns(3)
    row[0].metric(
        "Refused credentials", auth.failures, border=True, help="Both APIs, since Redis started"
    )
    row[1].metric(
        "Throttled requests",
        auth.throttled,
        border=True,
        help="Answered 429: the address was past IOTP_AUTH_FAILURE_LIMIT refused credentials",
    )
    last = auth.last_failure_at
    row[2].metric(
        "Last refused", "never" if last is None else last.strftime("%H:%M:%S"), border=True
    )


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _events_waiting(groups: list[GroupHealth]) -> int | None:
    total = 0
    for group in groups:
        if group.lag is None:
            return None
        total += group.lag + group.pending
    return total


def _ingest(ingest: dict[str, dict[str, float]]) -> None:
    now = time.time()
    previous = st.session_state.get("previous_ingest", {})
    rows = [
        _ingest_row(client_id, values, previous.get(client_id), now)
        for client_id, values in sorted(ingest.items())
    ]
    st.session_state["previous_ingest"] = ingest
    if not rows:
        st.info("No ingest process has reported in the last two minutes.")
        return
    column_config: dict[str, Any] = {
        heading: st.column_config.NumberColumn(heading, help=counted)
        for heading, counted in INGEST_COLUMNS.values()
    }
    column_config[RATE_COLUMN] = st.column_config.NumberColumn(
        RATE_COLUMN, help="MQTT messages received per second since the previous refresh"
    )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config=column_config)


def _ingest_row(
    client_id: str, values: dict[str, float], before: dict[str, float] | None, now: float
) -> dict[str, Any]:
    rate = None
    if before and values.get("updated_at", 0) > before.get("updated_at", 0):
        rate = (values["received"] - before["received"]) / (
            values["updated_at"] - before["updated_at"]
        )
    return {
        "process": client_id,
        **{heading: int(values.get(key, 0)) for key, (heading, _) in INGEST_COLUMNS.items()},
        RATE_COLUMN: None if rate is None else round(rate, 1),
        "last batch ms": values.get("last_batch_ms"),
        "reported s ago": round(now - values.get("updated_at", now), 1),
    }


health()
