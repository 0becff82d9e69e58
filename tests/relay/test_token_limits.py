"""The token's caps in the balancer script itself, against real Redis (issue #25): counted per
token in the pick's one call, with the user's rules (a retry's pick counts nothing, count_tokens'
counts only the minute), and a token without caps touches none of the token's counters."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from gateway.net import redisnames
from gateway.relay.picks import Candidate, PickOutcome, TokenLimits
from tests.relay.test_balancer import NO_LIMITS, make, offset_to_second_5_of_a_minute, wide_client

KEYS = [Candidate(f"k{i}", 10**6) for i in range(4)]


async def _pick(b, token: TokenLimits | None, **kw: object) -> PickOutcome:  # type: ignore[no-untyped-def]
    p = await b.pick(KEYS, user_id="u", limits=NO_LIMITS, request_id=uuid.uuid4().hex, stream=False, token=token, **kw)
    return p.outcome


async def test_200_concurrent_picks_never_exceed_a_tokens_daily_limit_of_150(
    servers: tuple[str, str], redis_prefix: str
) -> None:
    client = wide_client(servers[1])
    try:
        b = make(client, redis_prefix)
        token = TokenLimits("t1", daily=150)
        outcomes = await asyncio.gather(*[_pick(b, token) for _ in range(200)])
        assert outcomes.count(PickOutcome.OK) == 150
        assert outcomes.count(PickOutcome.TOKEN_DAILY) == 50
        assert await _pick(b, TokenLimits("t2", daily=150)) == PickOutcome.OK, "per token, not per user"
    finally:
        await client.aclose()


async def test_a_retrys_pick_counts_nothing_and_count_tokens_only_the_minute(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    b = make(redis, redis_prefix, clock_offset_ms=await offset_to_second_5_of_a_minute(redis))
    token = TokenLimits("t1", daily=5, per_minute=3)
    assert await _pick(b, token) == PickOutcome.OK  # minute 1, day 1
    assert await _pick(b, token, count_user=False) == PickOutcome.OK  # a retry of the same request
    assert await _pick(b, token, reserve=False) == PickOutcome.OK  # count_tokens: minute 2, day 1
    assert await _pick(b, token) == PickOutcome.OK  # minute 3, day 2
    assert await _pick(b, token) == PickOutcome.TOKEN_RPM
    assert int(await redis.hget(redisnames.token_daily(redis_prefix, b.today()), "t1")) == 2
    assert int(await redis.hget(redisnames.token_rpm(redis_prefix, b._minute[1]), "t1")) == 3


async def test_the_budget_refuses_once_the_spend_reaches_it(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    token = TokenLimits("t1", budget_micro_usd=30_000)
    assert await _pick(b, token) == PickOutcome.OK
    await b._spend(b.today(), "t1", 29_999)
    assert await _pick(b, token) == PickOutcome.OK
    await b._spend(b.today(), "t1", 1)
    assert await _pick(b, token) == PickOutcome.TOKEN_BUDGET
    assert await _pick(b, token, reserve=False) == PickOutcome.OK, "count_tokens costs nothing"
    assert int(await redis.hget(redisnames.token_spend(redis_prefix, b.today()), "t1")) == 30_000


async def test_a_token_without_caps_touches_no_token_counter(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    for token in (None, TokenLimits("t1")):
        assert await _pick(b, token) == PickOutcome.OK
    names = [k async for k in redis.scan_iter(match=f"{redis_prefix}:*")]
    assert not [n for n in names if b":tdaily:" in n or b":trpm:" in n or b":tspend:" in n], names
