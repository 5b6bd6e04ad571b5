"""Logging set-up, called only by entry points."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # One line per HTTP request of a client library drowns what iotp itself says.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
