"""Alarms: active first, then acknowledged, then the history; acknowledged through the
command API, whose answer (or refusal) is shown as it gave it.

An acknowledgement is sent for the logged-in person (dashboard.command_client): their name,
never a typed one. A role that may not acknowledge sees no form.

The lists read the alarm read model, so an acknowledgement shows in them once its event has
gone through the outbox and the aggregators, a moment after the command API accepted it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.command_client import acknowledge
from dashboard.data import SEVERITY_MARKS, local_times, read, settings
from dashboard.login import Person, current_person
from dashboard.refresh import refresh_interval
from iotp.events import SEVERITIES
from iotp.model import is_device_id
from iotp.permissions import Permission
from read_models import alarms

RANGES = {"all": None, "24 h": timedelta(days=1), "7 d": timedelta(days=7)}
COLUMNS = ["severity", "device", "metric", "state", "raised_at", "value", "acknowledged_by"]

st.title("Alarms")


@st.fragment(run_every=refresh_interval())
def tiles() -> None:
    counts = read(alarms.open_alarm_counts)
    if counts is None:
        return
    row = st.columns(6)
    for column, severity in zip(row, SEVERITIES, strict=False):
        column.metric(
            f"{SEVERITY_MARKS[severity]} {severity.capitalize()}",
            getattr(counts, severity),
            border=True,
            help=f"{severity.capitalize()} alarms not cleared",
        )
    row[4].metric("Active", counts.active, border=True, help="Not acknowledged, not cleared")
    row[5].metric("Acknowledged", counts.acknowledged, border=True, help="Not cleared yet")


def frame_of(page: alarms.AlarmPage) -> pd.DataFrame:
    rows = [
        {
            "alarm_id": str(a.alarm_id),
            "severity": f"{SEVERITY_MARKS[a.severity]} {a.severity}",
            "device": f"device?device={a.device_id}",
            "metric": a.metric or a.condition,
            "state": a.state,
            "raised_at": a.raised_at,
            "value": a.value,
            "acknowledged_by": a.acknowledged_by,
            "acknowledged_at": a.acknowledged_at,
            "note": a.note,
            "cleared_at": a.cleared_at,
            "clear_reason": a.clear_reason,
        }
        for a in page.items
    ]
    return local_times(pd.DataFrame(rows), "raised_at", "acknowledged_at", "cleared_at")


def show(page: alarms.AlarmPage | None, columns: list[str], empty: str) -> None:
    if page is None:
        return
    if not page.items:
        st.caption(empty)
        return
    st.dataframe(
        frame_of(page)[columns],
        hide_index=True,
        width="stretch",
        column_config={
            "device": st.column_config.LinkColumn(
                "device", display_text=r"device\?device=(.*)", help="Open the device page"
            )
        },
    )


def acknowledge_form(active: alarms.AlarmPage, person: Person) -> None:
    if not person.may(Permission.ALARMS_ACKNOWLEDGE):
        st.caption(f"Your role ({person.role}) cannot acknowledge alarms.")
        return
    labels = {
        str(a.alarm_id): f"{SEVERITY_MARKS[a.severity]} {a.device_id} · {a.metric or a.condition}"
        f" · {a.raised_at:%Y-%m-%d %H:%M} UTC"
        for a in active.items
    }
    with st.form("acknowledge", clear_on_submit=False, border=True):
        st.markdown("**Acknowledge an active alarm**")
        chosen = st.selectbox("Alarm", list(labels), format_func=labels.__getitem__, key="ack_id")
        note = st.text_input("Note (optional)", max_chars=1000, key="ack_note")
        st.caption(f"Acknowledged as {person.name}")
        submitted = st.form_submit_button("Acknowledge", type="primary")
    if not submitted or chosen is None:
        return
    ok, message = acknowledge(chosen, person, note.strip())
    if ok:
        st.success(message + " The lists show it once the read models have the event.")
    else:
        st.error(message)


tiles()
filters = st.columns([3, 2, 2])
device = (
    filters[0]
    .text_input("Device id", value=st.query_params.get("device", ""), key="alarm_device")
    .strip()
)
if device and not is_device_id(device):
    st.warning("A device id is 1 to 64 letters, digits, '_', '.' or '-'.")
    st.stop()
severity = filters[1].selectbox("Severity", ["all", *SEVERITIES], key="alarm_severity")
window = filters[2].selectbox("Raised in the last", list(RANGES), key="alarm_range")
span = RANGES[window]
chosen_filters: dict[str, Any] = {
    "device_id": device or None,
    "severity": None if severity == "all" else severity,
    "start": datetime.now(UTC) - span if span else None,
}
page_size = settings().dashboard_page_size

active = read(alarms.list_alarms, state="active", limit=page_size, **chosen_filters)
st.subheader(f"Active ({active.total if active else '?'})")
show(active, COLUMNS[:-1], "No active alarm.")
if active is not None and active.items:
    acknowledge_form(active, current_person())

acknowledged = read(alarms.list_alarms, state="acknowledged", limit=page_size, **chosen_filters)
st.subheader(f"Acknowledged ({acknowledged.total if acknowledged else '?'})")
show(acknowledged, [*COLUMNS, "acknowledged_at", "note"], "No acknowledged alarm.")

st.subheader("History")
history_page = st.session_state.get("history_page", 1)
history = read(
    alarms.list_alarms,
    state="cleared",
    limit=page_size,
    offset=(history_page - 1) * page_size,
    **chosen_filters,
)
if history is not None:
    pages = max(1, -(-history.total // page_size))
    controls = st.columns([1, 5])
    controls[0].number_input("Page", min_value=1, max_value=pages, key="history_page")
    controls[1].caption(f"{history.total:,} cleared alarms, page {history_page} of {pages}")
show(history, [*COLUMNS, "cleared_at", "clear_reason"], "No cleared alarm.")
