"""Process-wide tuning of the Python runtime for iotp's long-running services."""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

# Ingest and the aggregators make many short-lived objects per batch (payloads, readings,
# events), almost none of them in cycles. With the default first-generation threshold (700
# allocations) the cyclic collector ran about a third of their busy time (py-spy, issue 14),
# mostly re-scanning the long-lived objects of start-up (modules, pools, caches).
GC_THRESHOLDS = (50_000, 20, 100)


def settle_gc() -> None:
    """Move everything alive after start-up out of the collector's view, and let it run
    less often. Reference counting still frees almost everything at once."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    logger.debug("gc: %s objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
