"""Background tasks that live as long as a cleanup context: started on entry, cancelled and
awaited on exit, so none outlives the resources it uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)

RECANCEL_EVERY = 0.5  # seconds
RECANCEL_TRIES = 20


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel and wait, cancelling again if a library swallowed the cancellation (a client
    retrying its connect can), so that shutdown is never stuck behind a loop that keeps going.
    An error the task ended with is raised here, as `await task` would."""
    for _ in range(RECANCEL_TRIES):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=RECANCEL_EVERY)
        if done:
            break
    else:
        log.warning("background_task_would_not_stop", task=task.get_name())
        return
    if not task.cancelled():
        task.result()
