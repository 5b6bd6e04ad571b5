"""Auto-refresh of the live parts of a page, with an off switch."""

from __future__ import annotations

import streamlit as st

from dashboard.data import settings


def refresh_interval() -> float | None:
    """Seconds between refreshes (IOTP_DASHBOARD_REFRESH_SECONDS), or None when switched off."""
    configured = settings().dashboard_refresh_seconds
    if configured <= 0:
        return None
    on = st.sidebar.toggle(
        "Auto-refresh",
        value=True,
        key="auto_refresh",
        help=f"Reload live figures every {configured:g} s",
    )
    return configured if on else None
