"""The HTTP telemetry child's start, seen from ingest: not waited for, but watched."""

from __future__ import annotations

import threading

import pytest

from ingest import http_process
from ingest.http_process import HttpChild
from iotp.settings import Settings


def _child() -> HttpChild:
    # The start check alone: no process is spawned.
    child = object.__new__(HttpChild)
    child.settings = Settings(ingest_http_port=18088)
    child.stopping = threading.Event()
    child.ready = threading.Event()
    child.never_served = False
    return child


def test_a_child_that_never_serves_stops_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_process, "STARTUP_SECONDS", 0.05)
    child, stop = _child(), threading.Event()
    child.check_started(stop)
    assert stop.is_set() and child.never_served


def test_a_child_that_serves_in_time_leaves_ingest_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_process, "STARTUP_SECONDS", 5.0)
    child, stop = _child(), threading.Event()
    threading.Timer(0.05, child.ready.set).start()
    child.check_started(stop)
    assert not stop.is_set() and not child.never_served


def test_a_child_asked_to_stop_before_serving_is_no_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_process, "STARTUP_SECONDS", 0.05)
    child, stop = _child(), threading.Event()
    child.stopping.set()
    child.check_started(stop)
    assert not stop.is_set() and not child.never_served
