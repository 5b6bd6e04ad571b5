"""Fleet: tiles, readings per minute, and the device directory."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import (
    alarm_badge,
    liveness_rule,
    local_times,
    pipeline_report,
    read,
    settings,
)
from dashboard.refresh import refresh_interval
from read_models import alarms, queries

st.title("Fleet")
rule = liveness_rule()


@st.fragment(run_every=refresh_interval())
def tiles() -> None:
    fleet = read(queries.fleet, rule)
    if fleet is None:
        return
    health = pipeline_report()
    row = st.columns(4)
    row[0].metric("Registered", f"{fleet.registered:,}", border=True)
    row[1].metric("Online", f"{fleet.online:,}", border=True)
    row[2].metric("Offline", f"{fleet.offline:,}", border=True)
    row[3].metric("Never seen", f"{fleet.never_seen:,}", border=True)
    row = st.columns(4)
    row[0].metric("Decommissioned", f"{fleet.decommissioned:,}", border=True)
    per_minute = [count for _, count in fleet.readings_per_minute]
    latest = per_minute[-2] if len(per_minute) > 1 else (per_minute[-1] if per_minute else 0)
    row[1].metric(
        "Values / min",
        f"{latest:,}",
        chart_data=per_minute or None,
        chart_type="area",
        border=True,
        help="Values (one metric at one time) per minute of reading time; the last full minute",
    )
    row[2].metric(
        "Breaching range",
        f"{fleet.breaching_devices:,}",
        border=True,
        help="Devices whose last value of some metric is outside its declared range",
    )
    lag = None  # shown as ?: Redis does not answer, or a group's lag is unknown
    if health is not None and all(g.lag is not None for g in health.groups):
        lags = [g.lag or 0 for g in health.groups] + [g.pending for g in health.groups]
        lag = max(lags) if lags else 0
    shown = "?" if lag is None else f"{lag:,} events"
    replica = health.replica if health is not None else None
    if replica is not None and not replica.caught_up:  # this page reads that replica
        delay = replica.replay_delay_seconds
        shown += " + replica " + ("?" if delay is None else f"{delay:,.1f} s")
    row[3].metric(
        "Read-model lag",
        shown,
        border=True,
        help="Events published but not yet applied to the read models, and how far the read"
        " replica (IOTP_READ_REPLICA_URL) is behind the read store when one is used",
    )
    st.caption(
        f"Alarms not cleared: {alarm_badge(fleet.alarms.model_dump()) or 'none'} · [Alarms](alarms)"
    )


tiles()

st.subheader("Devices")
filters = st.columns([3, 2, 2, 2, 2])
search = filters[0].text_input("Search name or id", key="search")
status = filters[1].selectbox("Status", ["all", "active", "decommissioned"], key="status")
liveness = filters[2].selectbox(
    "Liveness", ["all", "online", "offline", "never_seen"], key="liveness"
)
kind = filters[3].selectbox("Kind", ["all", *(read(queries.kinds) or [])], key="kind")
sort = filters[4].selectbox("Sort by", sorted(queries.SORTABLE), index=1, key="sort")
page_size = settings().dashboard_page_size
page = read(
    queries.list_devices,
    rule,
    status=None if status == "all" else status,
    kind=None if kind == "all" else kind,
    liveness=None if liveness == "all" else liveness,
    search=search or None,
    sort=sort,
    descending=st.session_state.get("descending", False),
    limit=page_size,
    offset=(st.session_state.get("page", 1) - 1) * page_size,
)
if page is not None:
    pages = max(1, -(-page.total // page_size))
    controls = st.columns([1, 1, 4])
    controls[0].number_input("Page", min_value=1, max_value=pages, key="page")
    controls[1].toggle("Descending", key="descending")
    controls[2].caption(
        f"{page.total:,} devices, page {st.session_state.get('page', 1)} of {pages}"
    )
    open_alarms = read(alarms.open_alarms_by_device, [d.device_id for d in page.items]) or {}
    frame = pd.DataFrame(
        [
            {
                "device": f"device?device={d.device_id}",
                "name": d.name,
                "kind": d.kind,
                "status": d.status,
                "liveness": d.liveness,
                "alarms": alarm_badge(open_alarms.get(d.device_id, {})),
                "last seen": d.last_seen,
                **{f"last {k}": v for k, v in sorted(d.last_values.items())},
            }
            for d in page.items
        ]
    )
    if frame.empty:
        st.info("No device matches these filters.")
    else:
        st.dataframe(
            local_times(frame, "last seen"),
            hide_index=True,
            width="stretch",
            column_config={
                "device": st.column_config.LinkColumn(
                    "device", display_text=r"device\?device=(.*)", help="Open the device page"
                )
            },
        )
