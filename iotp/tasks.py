"""Stopping asyncio tasks that were asked to stop through an event."""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[None], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``task`` to end by itself, then cancel it."""
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        logger.warning("%s did not stop within %.0fs, cancelling it", task.get_name(), grace)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=grace)
    if done:
        with contextlib.suppress(asyncio.CancelledError):
            task.result()  # surfaces an error the task ended with
