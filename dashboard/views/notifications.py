"""Notifications: the webhook delivery log (read store), newest first, failures first in view.

The notifier keeps the log current from its delivery rows; this page only reads it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from psycopg.rows import dict_row

from dashboard.data import local_times, read
from dashboard.refresh import refresh_interval
from read_models.queries import Conn

STATES = ("pending", "delivered", "failed")
SHOWN = 200
COLUMNS = [
    "created_at",
    "state",
    "webhook",
    "event_type",
    "severity",
    "device_id",
    "alarm_id",
    "attempts",
    "last_status",
    "last_error",
    "last_attempt_at",
    "next_attempt_at",
    "finished_at",
    "delivery_id",
]


def delivery_counts(conn: Conn) -> dict[str, int]:
    """How many deliveries are in each state."""
    rows = conn.execute(
        "SELECT state, count(*) FROM read_models.webhook_deliveries GROUP BY state"
    ).fetchall()
    return {state: 0 for state in STATES} | {state: int(n) for state, n in rows}


def latest_deliveries(conn: Conn, states: list[str], limit: int) -> list[dict[str, Any]]:
    """The newest deliveries in ``states``, with the webhook's name or else where it posts."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT *, coalesce(webhook_name, webhook_origin) AS webhook"
            " FROM read_models.webhook_deliveries WHERE state = ANY(%s)"
            " ORDER BY created_at DESC, delivery_id LIMIT %s",
            (states, limit),
        )
        return cur.fetchall()


st.title("Notifications")
st.caption(
    "Webhook deliveries of alarm events. A delivery is retried with back-off until its"
    " receiver answers 2xx, and marked failed after IOTP_NOTIFY_GIVE_UP_HOURS."
)
chosen = st.multiselect("State", STATES, default=list(STATES))


@st.fragment(run_every=refresh_interval())
def deliveries() -> None:
    counts = read(delivery_counts)
    if counts is None:
        return
    for column, state in zip(st.columns(len(STATES)), STATES, strict=True):
        column.metric(state, counts[state])
    if counts["failed"]:
        st.error(f"{counts['failed']} deliveries failed: their receivers never answered 2xx.")
    rows = read(latest_deliveries, chosen, SHOWN)
    if rows is None:
        return
    if not rows:
        st.info("No deliveries yet: register a webhook with POST /webhooks on the command API.")
        return
    frame = local_times(
        pd.DataFrame(rows)[COLUMNS],
        "created_at",
        "last_attempt_at",
        "next_attempt_at",
        "finished_at",
    )
    st.dataframe(frame, hide_index=True, width="stretch")


deliveries()
