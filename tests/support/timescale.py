"""Helpers for the tests against TimescaleDB in PGlite (tests/timescale)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from iotp.db import connect
from read_models import retention


def unprepared_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retention job's connections without server-side prepared statements: PGlite is
    one session behind every connection, where two connections' statements collide by
    name."""

    def unprepared(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = connect(url, **kwargs)
        conn.prepare_threshold = None
        return conn

    monkeypatch.setattr(retention, "connect", unprepared)
