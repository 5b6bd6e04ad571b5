"""Device: attributes, per-metric statistics, and a chart per metric from the rollups."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.data import alarm_badge, deferred, liveness_rule, local_times, read, settings
from read_models import alarms, queries
from read_models.export import MEDIA_TYPES, ExportRequest, export_bytes
from read_models.rollup_tiers import BY_BUCKET, bucket_for_range

RANGES = {"1 h": timedelta(hours=1), "24 h": timedelta(days=1), "7 d": timedelta(days=7)}


def _choice_label(device_id: str) -> str:
    choice = choices.get(device_id)
    if choice is None:
        return device_id
    retired = " (decommissioned)" if choice.status == "decommissioned" else ""
    return f"{device_id} · {choice.name or ''}{retired}"


st.title("Device")
choices = {c.device_id: c for c in read(queries.device_choices) or []}
linked = st.query_params.get("device", "")
# A link (the Fleet table's) may name a device the picker does not list: past the picker's
# bound, or not in the read models (yet); it is offered anyway, so that the link works.
options = [linked, *choices] if linked and linked not in choices else list(choices)
device_id = st.selectbox(
    "Device",
    options,
    index=options.index(linked) if linked else None,
    format_func=_choice_label,
    placeholder="Type to search by id or name",
    key="device_id",
)
if len(choices) >= queries.MAX_DEVICE_CHOICES:
    st.caption(f"The first {len(choices):,} devices by id; open others from the Fleet page.")
if not device_id:
    st.info("Choose a device, or open one from the Fleet page.")
    st.stop()
st.query_params["device"] = device_id
device = read(queries.get_device, liveness_rule(), device_id)
if device is None:
    st.warning(f"Unknown device: {device_id!r} is not in the read models (yet).")
    st.stop()

st.header(device.name or device.device_id)
cols = st.columns(4)
cols[0].metric("Status", device.status)
cols[1].metric("Liveness", device.liveness.replace("_", " "))
cols[2].metric("Kind", device.kind or "?")
cols[3].metric("Values received", f"{device.readings:,}")
seen = local_times(pd.DataFrame({"t": [device.last_seen]}), "t")["t"][0]
st.caption(f"Last seen: {seen if device.last_seen else 'never'} · id `{device.device_id}`")
open_alarms = (read(alarms.open_alarms_by_device, [device.device_id]) or {}).get(device.device_id)
if open_alarms:
    badge = alarm_badge(open_alarms)
    st.markdown(f"**Alarms not cleared:** {badge} · [see them](alarms?device={device.device_id})")
with st.expander("Metadata and declared metrics"):
    st.json(
        {
            "metadata": device.metadata,
            "metrics": device.metrics,
            "location": {"lat": device.lat, "lon": device.lon},
        }
    )

stats = read(queries.device_stats, device.device_id) or []
if stats:
    frame = pd.DataFrame([s.model_dump() for s in stats])
    st.dataframe(
        local_times(frame, "min_ts", "max_ts", "first_ts", "last_ts")[
            [
                "metric",
                "count",
                "mean",
                "min",
                "max",
                "last_value",
                "last_ts",
                "breaches",
                "last_out_of_range",
            ]
        ],
        hide_index=True,
        width="stretch",
    )
else:
    st.info("No readings yet.")
    st.stop()

choice = st.radio("Range", [*RANGES, "custom"], horizontal=True, key="range")
end = datetime.now(UTC)
if choice == "custom":
    picked = st.date_input(
        "From / to", value=(end.date() - timedelta(days=3), end.date()), key="custom_range"
    )
    if isinstance(picked, tuple) and len(picked) == 2:
        start = datetime.combine(picked[0], time.min, tzinfo=UTC)
        end = datetime.combine(picked[1], time.max, tzinfo=UTC)
    else:
        st.stop()
else:
    start = end - RANGES[choice]
bucket = bucket_for_range(end - start)
tier = BY_BUCKET[bucket]
shown = ExportRequest(device.device_id, tier.name, start, end)
if end - start <= timedelta(days=settings().export_max_days):
    for column, file_format in zip(st.columns(2), MEDIA_TYPES, strict=True):
        column.download_button(
            f"Download {'CSV' if file_format == 'csv' else 'Parquet'}",
            data=deferred(export_bytes, shown, file_format),
            file_name=shown.file_name(file_format),
            mime=MEDIA_TYPES[file_format],
            key=f"download_{file_format}",
            on_click="ignore",
        )
    st.caption(f"Downloads: the {shown.source} buckets of every metric in the shown range.")
else:
    st.caption("Downloads cover IOTP_EXPORT_MAX_DAYS at most: narrow the range.")
declared = {m["name"]: m for m in device.metrics}
# Alarms drawn on the charts: raised before the range's end and not cleared before its start.
alarm_page = read(alarms.list_alarms, device_id=device.device_id, end=end, limit=500)
device_alarms = [
    a
    for a in (alarm_page.items if alarm_page else [])
    if a.cleared_at is None or a.cleared_at >= start
]
for stat in stats:
    points = read(queries.series, device.device_id, stat.metric, start, end, bucket) or []
    st.subheader(f"{stat.metric} ({tier.name} buckets)")
    if not points:
        st.caption("No readings in this range.")
        continue
    data = local_times(pd.DataFrame([p.model_dump() for p in points]), "bucket")
    spec = declared.get(stat.metric, {})
    low, high = spec.get("min"), spec.get("max")
    data["breach"] = ((low is not None) & (data["min"] < (low if low is not None else 0))) | (
        (high is not None) & (data["max"] > (high if high is not None else 0))
    )
    base = alt.Chart(data).encode(x=alt.X("bucket:T", title=None))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("min:Q", title=stat.metric, scale=alt.Scale(zero=False)), y2="max:Q"
    )
    chart = band + base.mark_line().encode(y="mean:Q")
    breaches = data[data["breach"]]
    if not breaches.empty:
        chart += (
            alt.Chart(breaches)
            .mark_point(color="red", filled=True)
            .encode(x="bucket:T", y="max:Q", tooltip=["bucket:T", "min:Q", "max:Q"])
        )
    marks = [
        {"at": at, "alarm": what}
        for a in device_alarms
        if a.metric in (stat.metric, None)  # an offline alarm (no metric) marks every chart
        for at, what in ((a.raised_at, f"{a.severity} raised"), (a.cleared_at, "cleared"))
        if at is not None and start <= at <= end
    ]
    if marks:
        chart += (
            alt.Chart(local_times(pd.DataFrame(marks), "at"))
            .mark_rule(strokeDash=[4, 3])
            .encode(x="at:T", color="alarm:N", tooltip=["at:T", "alarm:N"])
        )
    st.altair_chart(chart, width="stretch")
    st.caption(
        f"Last value {stat.last_value:g}"
        + (" (out of range)" if stat.last_out_of_range else "")
        + f" · {stat.breaches} range breaches"
    )
