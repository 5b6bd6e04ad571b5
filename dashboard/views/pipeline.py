"""Pipeline: ingest counters, dead letters, consumer groups and how far behind the read side is."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard.data import read, redis_client
from dashboard.refresh import refresh_interval
from read_models.pipeline import pipeline_health

st.title("Pipeline")


@st.fragment(run_every=refresh_interval())
def health() -> None:
    report = read(lambda conn: pipeline_health(conn, redis_client()))
    if report is None:
        return
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
    cols[3].metric(
        "Events waiting",
        f"{sum((g.lag or 0) + g.pending for g in report.groups):,}",
        border=True,
        help="Lag plus pending entries over every consumer group",
    )

    st.subheader("Ingest")
    now = time.time()
    previous = st.session_state.get("previous_ingest", {})
    rows = []
    for client_id, values in sorted(report.ingest.items()):
        before = previous.get(client_id)
        rate = None
        if before and values.get("updated_at", 0) > before.get("updated_at", 0):
            rate = (values["received"] - before["received"]) / (
                values["updated_at"] - before["updated_at"]
            )
        rows.append(
            {
                "process": client_id,
                "received": int(values.get("received", 0)),
                "stored": int(values.get("stored", 0)),
                "duplicates": int(values.get("duplicates", 0)),
                "dead letters": int(values.get("deadletters", 0)),
                "batches": int(values.get("batches", 0)),
                "messages/s": None if rate is None else round(rate, 1),
                "last batch ms": values.get("last_batch_ms"),
                "reported s ago": round(now - values.get("updated_at", now), 1),
            }
        )
    st.session_state["previous_ingest"] = report.ingest
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    else:
        st.info("No ingest process has reported in the last two minutes.")

    st.subheader("Consumer groups")
    st.dataframe(
        pd.DataFrame([g.model_dump() for g in report.groups]), hide_index=True, width="stretch"
    )
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


health()
