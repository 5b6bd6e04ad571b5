"""A private Mosquitto for tests, configured like production (local_platform/mosquitto.conf)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from local_platform.broker import local_mosquitto


@contextmanager
def private_mosquitto(tmp: Path, extra: str = "") -> Iterator[str]:
    """Run mosquitto on a free port for the block; yields its ``mqtt://`` URL."""
    with local_mosquitto(tmp, extra) as broker:
        yield broker.url
