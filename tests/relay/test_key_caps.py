"""Donors' caps in the balancer against real Redis (DESIGN.md "Donors' rules for their keys"):
calls per sliding minute, calls in flight, tokens per minute, calls per model per day. Decided in
the pick's one call, across balancers; time moves through `clock_offset_ms`, never sleeps."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import redis.asyncio as aioredis

from gateway.relay.picks import Candidate, PickOutcome
from tests.relay.test_balancer import make, pick, wide_client


def capped(key_id: str, *, rpm: int = 0, conc: int = 0, tpm: int = 0, mday: int = 0, daily: int = 1000) -> Candidate:
    return Candidate(key_id, daily, f"|{rpm}|{conc}|{tpm}|{mday}|m")


async def test_rpm_cap_is_a_sliding_minute_across_two_balancers(
    redis: aioredis.Redis, redis_prefix: str, servers: tuple[str, str]
) -> None:
    client = wide_client(servers[1])
    try:
        one, two = make(redis, redis_prefix), make(client, redis_prefix)
        keys = [capped("k1", rpm=5)]
        picks = await asyncio.gather(*(pick(b, keys) for b in [one, two] * 10))
        outcomes = Counter(p.outcome for p in picks)
        assert outcomes == {PickOutcome.OK: 5, PickOutcome.BUSY: 15}
        busy = next(p for p in picks if p.outcome == PickOutcome.BUSY)
        assert 58 <= busy.retry_after <= 60  # when the oldest start leaves the window
        # 30 s on: still the same minute window, still busy; 61 s on: the five starts have left it.
        half = make(redis, redis_prefix, clock_offset_ms=30_000)
        assert (await pick(half, keys)).outcome == PickOutcome.BUSY
        later = make(redis, redis_prefix, clock_offset_ms=61_000)
        assert [(await pick(later, keys)).outcome for _ in range(6)] == [PickOutcome.OK] * 5 + [PickOutcome.BUSY]
    finally:
        await client.aclose()


async def test_a_key_at_its_cap_is_skipped_for_the_next_least_used(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [capped("k1", rpm=2), Candidate("k2", 1000)]
    taken = Counter([(await pick(b, keys)).key_id for _ in range(10)])
    assert taken == {"k1": 2, "k2": 8}


async def test_concurrency_cap_frees_a_slot_when_a_call_finishes(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [capped("k1", conc=2)]
    first, second = await pick(b, keys, request_id="r1"), await pick(b, keys, request_id="r2")
    assert (first.outcome, second.outcome, first.held) == (PickOutcome.OK, PickOutcome.OK, True)
    third = await pick(b, keys)
    assert third.outcome == PickOutcome.BUSY and third.retry_after == 1
    await b.finish(first, "r1", tokens=10)
    assert (await pick(b, keys)).outcome == PickOutcome.OK  # the freed slot, found at once
    assert (await pick(b, keys)).outcome == PickOutcome.BUSY


async def test_a_released_reservation_frees_its_slot(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [capped("k1", conc=1)]
    first = await pick(b, keys, request_id="r1")
    assert (await pick(b, keys)).outcome == PickOutcome.BUSY
    await b.release("k1", first.day, pool_id=first.pool_id, request_id="r1")
    assert (await pick(b, keys)).outcome == PickOutcome.OK


async def test_a_dead_process_lease_runs_out(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, stream_lease_seconds=30)
    keys = [capped("k1", conc=1)]
    assert (await pick(b, keys)).outcome == PickOutcome.OK  # never finished: its process "died"
    assert (await pick(b, keys)).outcome == PickOutcome.BUSY
    later = make(redis, redis_prefix, stream_lease_seconds=30, clock_offset_ms=31_000)
    assert (await pick(later, keys)).outcome == PickOutcome.OK


async def test_tokens_per_minute_cap_counts_finished_calls(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [capped("k1", tpm=1000)]
    first = await pick(b, keys, request_id="r1")
    await b.finish(first, "r1", tokens=600)
    second = await pick(b, keys, request_id="r2")
    assert second.outcome == PickOutcome.OK  # 600 < 1000
    await b.finish(second, "r2", tokens=500)
    assert (await pick(b, keys)).outcome == PickOutcome.BUSY  # 1100 in the window
    later = make(redis, redis_prefix, clock_offset_ms=61_000)
    assert (await pick(later, keys)).outcome == PickOutcome.OK


async def test_model_daily_limit_is_a_daily_cap(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [capped("k1", mday=3)]
    picks = [await pick(b, keys, request_id=uuid.uuid4().hex) for _ in range(4)]
    assert [p.outcome for p in picks] == [PickOutcome.OK] * 3 + [PickOutcome.EXHAUSTED]
    assert picks[-1].retry_after > 60  # 429 until the day ends, not a short busy
    await b.release("k1", picks[0].day, pool_id=picks[0].pool_id, request_id="x")
    assert (await pick(b, keys)).outcome == PickOutcome.OK  # a call given back on the model


async def test_uncapped_keys_are_not_held(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    p = await pick(b, [Candidate("k1", 10), capped("k2", rpm=100, daily=10)])
    assert p.outcome == PickOutcome.OK
    assert p.held is False  # an rpm cap alone needs no finish
