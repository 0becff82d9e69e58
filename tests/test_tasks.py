"""Background tasks stop with their cleanup context, even when a library swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.tasks import background


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # what a client retrying its connect can do
                raise

    async with asyncio.timeout(3):
        async with background(stubborn()) as task:
            await asyncio.sleep(0)
    assert task.cancelled() and cancels == 2


async def test_an_error_the_task_ended_with_is_raised_on_exit() -> None:
    async def broken() -> None:
        raise RuntimeError("the loop died")

    with pytest.raises(RuntimeError, match="the loop died"):
        async with background(broken()):
            await asyncio.sleep(0.01)


async def test_a_plain_task_stops_at_once() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with background(forever()) as task:
        await asyncio.sleep(0)
    assert task.cancelled() and loop.time() - started < 0.2
