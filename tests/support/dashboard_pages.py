"""Dashboard pages under Streamlit's AppTest, pointed at the test stores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from iotp.settings import Settings, get_settings

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "views"


@contextmanager
def dashboard_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The dashboard reads the test's stores, without auto-refresh, for the block."""
    for name, value in (
        ("IOTP_DATABASE_URL", settings.database_url),
        ("IOTP_REDIS_URL", settings.redis_url),
        ("IOTP_DASHBOARD_REFRESH_SECONDS", "0"),
    ):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()
        st.cache_resource.clear()  # closes the block's pools: its servers may stop after it


def run_page(page: str, **query: str) -> AppTest:
    """Run one page (``pipeline.py``...) with these query parameters."""
    app = AppTest.from_file(str(PAGES / page), default_timeout=30)
    for key, value in query.items():
        app.query_params[key] = value
    return app.run()
