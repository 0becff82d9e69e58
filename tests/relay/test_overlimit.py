"""The look at a caller's per-minute count before a large body (relay/overlimit.py), against real
Redis: it reads the balancer's count and changes nothing, and a clock that names another minute
than Redis' refuses nobody."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.net import redisnames
from gateway.relay import overlimit
from gateway.relay.overlimit import OverLimit, minute_name


async def _this_minute() -> str:
    left = 60 - time.time() % 60
    if left < 3:
        await asyncio.sleep(left + 0.05)
    return minute_name(int(time.time() * 1000))


async def test_a_count_at_the_limit_is_a_refusal_remembered_and_left_as_it_was(redis: Any, redis_prefix: str) -> None:
    key = redisnames.user_rpm(redis_prefix, await _this_minute())
    await redis.hset(key, mapping={"alice": 3, "bob": 2})
    over = OverLimit(redis_prefix)
    seconds = await over.peek(redis, "alice", 3)
    assert seconds is not None and 1 <= seconds <= 60
    assert over.retry_after("alice") in (seconds, seconds - 1)  # from then on, no Redis call
    assert await over.peek(redis, "bob", 3) is None and over.retry_after("bob") is None
    assert await over.peek(redis, "carol", 1) is None  # never counted
    assert await redis.hgetall(key) == {b"alice": b"3", b"bob": b"2"}


async def test_a_clock_in_another_minute_than_redis_refuses_nobody(
    redis: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    behind = int(time.time() * 1000) - 120_000  # this process' clock two minutes late
    key = redisnames.user_rpm(redis_prefix, minute_name(behind - behind % 60_000))
    await redis.hset(key, "alice", 99)
    monkeypatch.setattr(overlimit, "wall_ms", lambda: behind)
    over = OverLimit(redis_prefix)
    assert await over.peek(redis, "alice", 3) is None
    assert over.retry_after("alice") is None
