"""Audit: who issued which command, on what, and whether it was allowed; newest first.

For admins and operators only, as ``GET /audit`` (permission ``audit:read``): the trail
names every key and person. It reads the audit log, which `iotp audit` keeps a moment
behind the commands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.data import local_times, read, settings
from dashboard.login import current_person
from iotp.permissions import ROLES_OF, Permission
from read_models import audit_queries
from read_models.audit import OUTCOMES

RANGES = {
    "all": None,
    "1 h": timedelta(hours=1),
    "24 h": timedelta(days=1),
    "7 d": timedelta(days=7),
    "30 d": timedelta(days=30),
}
OUTCOME_MARKS = {"succeeded": "✅", "denied": "⛔"}

st.title("Audit")

person = current_person()
if person.role not in ROLES_OF[Permission.AUDIT_READ]:
    st.error(f"The audit trail is for admins and operators; {person.name} is a {person.role}.")
    st.stop()


def frame_of(page: audit_queries.AuditPage) -> pd.DataFrame:
    rows = [
        {
            "at": entry.at,
            "outcome": f"{OUTCOME_MARKS.get(entry.outcome, '')} {entry.outcome}",
            "actor": entry.actor.name,
            "actor_id": entry.actor.id,
            "kind": entry.actor.kind,
            "via": entry.actor.via,
            "action": entry.action,
            "target": entry.target,
            "detail": ", ".join(f"{k}={v}" for k, v in entry.detail.items()),
        }
        for entry in page.items
    ]
    return local_times(pd.DataFrame(rows), "at")


def text_filter(column: Any, label: str, key: str, help_text: str) -> str | None:
    value: str = column.text_input(label, key=key, help=help_text).strip()
    return value or None


filters = st.columns([2, 2, 2, 1, 1])
chosen: dict[str, Any] = {
    "actor": text_filter(filters[0], "Actor", "audit_actor", "A key's or person's name or id"),
    "action": text_filter(
        filters[1], "Action", "audit_action", 'Exactly, e.g. "device.register", "POST /devices"'
    ),
    "target": text_filter(filters[2], "Target", "audit_target", 'Exactly, e.g. "device:boiler-1"'),
}
outcome = filters[3].selectbox("Outcome", ["all", *OUTCOMES], key="audit_outcome")
window = filters[4].selectbox("In the last", list(RANGES), key="audit_range")
span = RANGES[window]
chosen["outcome"] = None if outcome == "all" else outcome
chosen["start"] = datetime.now(UTC) - span if span else None

page_size = settings().dashboard_page_size
page_number = st.session_state.get("audit_page", 1)
page = read(
    audit_queries.list_audit, limit=page_size, offset=(page_number - 1) * page_size, **chosen
)
if page is not None:
    pages = max(1, -(-page.total // page_size))
    controls = st.columns([1, 5])
    controls[0].number_input("Page", min_value=1, max_value=pages, key="audit_page")
    controls[1].caption(f"{page.total:,} commands, page {page_number} of {pages}")
    if page.items:
        st.dataframe(frame_of(page), hide_index=True, width="stretch")
    else:
        st.caption("No command recorded with these filters.")
