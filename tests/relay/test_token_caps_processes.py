"""A token's caps and a trust level's tier across two real gateway processes (issue #25): counted
in the pick's one Redis call, so exact whatever process serves.

* daily_requests N: exactly N served, then 429 token_daily_limit (Retry-After: the day's end).
* requests_per_minute N: exactly N served in the minute, then 429 token_rate_limit.
* daily_budget_usd: the token stops once its spend today reaches it; the overshoot is bounded by
  the calls in flight when it did, plus what the rate adds while a spend is on its way to Redis.
* `[limits.trust_levels."N"]`: members of Linux.do trust level 1 and 3 (signed in through the fake
  provider, their token made on /api/tokens) get their level's daily limit and models.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway import config as config_mod
from gateway.net import redisnames
from gateway.relay.keyindex import KEY_INDEX
from gateway.store import tokens as tokens_mod
from tests.ops.test_cluster import env, wait_ready  # noqa: F401 (fixtures)
from tests.relay.test_key_caps_processes import Answer, Process, post, ready, spawn  # noqa: F401 (fixtures)
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import ENGLISH, FakeLinuxDo, Site, free_port, site_app, site_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, scope_token, user_with_token

provider = fake_linuxdo.provider  # fixture

PRICE = {"gpt-4o-mini": {"input": 0, "output": 1000}}  # the fake's 12 completion tokens: $0.012 a call
CALL_MICRO_USD = 12_000
BUDGET = Decimal("0.06")  # reached by the 5th call


async def _setup(pool: asyncpg.Pool, config: config_mod.Config, upstream: FakeUpstream, **scope: Any) -> str:
    donor, _ = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, upstream.base_url, daily_limit=100_000)
    _, token = await user_with_token(pool, "caller")
    await scope_token(pool, token, **scope)
    return token


async def _capped_burst(
    spawn: Callable[[], Process],  # noqa: F811
    pool: asyncpg.Pool,
    config: config_mod.Config,
    upstream: FakeUpstream,
    n: int,
    **scope: Any,
) -> list[Answer]:
    """`n` requests at once, alternating between two fresh processes, with a token of `scope`
    (inside one minute), then one more after them; every refusal says x-should-retry: false."""
    token = await _setup(pool, config, upstream, **scope)
    procs = [spawn(), spawn()]
    async with aiohttp.ClientSession() as session:
        await ready(session, *procs)
        if time.time() % 60 > 55:  # one burst inside one minute
            await asyncio.sleep(61 - time.time() % 60)
        answers = await asyncio.gather(*[post(session, procs[i % 2].port, token) for i in range(n)])
        url = f"http://127.0.0.1:{procs[1].port}/v1/chat/completions"
        body = {"model": "gpt-4o-mini", "messages": []}
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 429 and resp.headers["x-should-retry"] == "false"
        return [*answers, await post(session, procs[0].port, token)]


async def test_daily_requests_hold_exactly_across_two_processes(
    spawn: Callable[[], Process],  # noqa: F811
    pool: asyncpg.Pool,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
) -> None:
    answers = await _capped_burst(spawn, pool, config, fake_upstream, 30, daily_requests=7)
    later = answers.pop()
    served = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200] + [later]
    assert len(served) == 7, [(a.status, a.code) for a in answers]
    assert {(a.status, a.code) for a in refused} == {(429, "token_daily_limit")}
    assert all(0 < int(a.retry_after or 0) <= 86400 for a in refused)
    assert "This token has used its requests for today." in {a.message for a in refused}
    assert len(fake_upstream.requests) == 7


async def test_requests_per_minute_hold_exactly_across_two_processes(
    spawn: Callable[[], Process],  # noqa: F811
    pool: asyncpg.Pool,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
) -> None:
    answers = await _capped_burst(spawn, pool, config, fake_upstream, 20, requests_per_minute=5)
    answers.pop()  # the one after the burst
    served = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(served) == 5, [(a.status, a.code) for a in answers]
    assert {(a.status, a.code) for a in refused} == {(429, "token_rate_limit")}
    assert all(0 < int(a.retry_after or 0) <= 60 for a in refused)
    assert len(fake_upstream.requests) == 5


async def test_a_daily_budget_stops_the_token_across_two_processes(
    spawn: Callable[[], Process],  # noqa: F811
    env: dict[str, str],  # noqa: F811
    pool: asyncpg.Pool,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
) -> None:
    """8 clients through two processes, one token with a $0.06 budget ($0.012 a call): it stops
    after the 5th call plus the calls in flight when the 5th one's spend reached Redis. Bound
    checked: in flight (the 8 clients) + rate × 0.2 s (a spend's background call)."""
    env["SHAREKEY_PRICES"] = json.dumps(PRICE)
    token = await _setup(pool, config, fake_upstream, daily_budget_usd=BUDGET)
    procs = [spawn(), spawn()]
    workers = 8
    served: list[float] = []
    refused: set[tuple[int, str | None]] = set()
    async with aiohttp.ClientSession() as session:
        await ready(session, *procs)
        began = time.monotonic()

        async def client(i: int) -> None:
            while time.monotonic() - began < 15:
                answer = await post(session, procs[i % 2].port, token)
                if answer.status != 200:
                    refused.add((answer.status, answer.code))
                    return
                served.append(answer.got)

        await asyncio.gather(*[client(i) for i in range(workers)])
    within = math.ceil(BUDGET * 1_000_000 / CALL_MICRO_USD)
    assert refused == {(429, "token_budget_reached")}
    assert len(served) >= within
    rate = len(served) / max(max(served) - min(served), 1e-3)
    bound = workers + rate * 0.2
    print(f"\ntoken budget: {within} calls; served {len(served)}; rate {rate:.0f}/s; bound {within + bound:.0f}")
    assert len(served) - within <= bound
    # Every served call was counted at its price: the token's spend today in Redis.
    redis = aioredis.from_url(config.redis.url)
    try:
        tid = await pool.fetchval("SELECT id FROM api_tokens WHERE token_hash = $1", tokens_mod.token_hash(token))
        hashes = [k async for k in redis.scan_iter(match=redisnames.token_spend(config.redis.key_prefix, "*"))]
        assert len(hashes) == 1
        deadline = time.monotonic() + 5
        while int(await redis.hget(hashes[0], str(tid)) or 0) != CALL_MICRO_USD * len(served):
            assert time.monotonic() < deadline, "every served call's spend reaches Redis"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    assert len(fake_upstream.requests) == len(served)


TIERS = {"1": {"daily_requests": 2, "models": ["gpt-4o-mini"]}, "3": {"daily_requests": 4}}


@pytest.fixture
async def tiered(config: config_mod.Config, pool: asyncpg.Pool, provider: FakeLinuxDo, aiohttp_client: Any) -> Site:
    """The signed-in site (fake Linux.do) with `[limits.trust_levels]` = TIERS."""
    port = free_port()
    levels = config_mod.load(env={"SHAREKEY_LIMITS_TRUST_LEVELS": json.dumps(TIERS)}).limits.trust_levels
    site_cfg = site_config(config, provider, port).replace(
        "limits", user_daily_requests=100, user_requests_per_minute=0, trust_levels=levels
    )
    client = await aiohttp_client(TestServer(site_app(site_cfg), host="127.0.0.1", port=port), headers=ENGLISH)
    return Site(client, client.app, site_cfg, pool, provider)


async def test_trust_levels_give_linuxdo_members_their_tiers_limits_and_models(
    tiered: Site,
    spawn: Callable[[], Process],  # noqa: F811
    env: dict[str, str],  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    """bob (trust level 1) and alice (3) sign in through Linux.do and make a token on /api/tokens.
    On the site's process and a second `sharekey serve`: bob may call gpt-4o-mini only, twice a
    day in all; alice both models, four times; /v1/models lists what each may call."""
    site = tiered
    env["SHAREKEY_LIMITS_TRUST_LEVELS"] = json.dumps(TIERS)
    fake_upstream.models.append("gpt-4o")
    donor, _ = await user_with_token(site.pool, "donor", trust_level=4)
    await add_key(site.pool, site.config, donor, fake_upstream.base_url, models=["gpt-4o-mini", "gpt-4o"])
    await site.app[KEY_INDEX].reload()
    made: dict[str, str] = {}
    for name, level in (("bob", 1), ("alice", 3)):
        assert (await site.sign_in(name, trust_level=level)).status == 303
        reply = await site.client.post("/api/tokens", json={"label": "t"}, headers=await site.write_headers())
        assert reply.status == 201, await reply.text()
        made[name] = (await reply.json())["token"]
    other = spawn()
    ports = [site.client.port, other.port]
    async with aiohttp.ClientSession() as session:
        await ready(session, other)
        for name, listed in (("bob", ["gpt-4o-mini"]), ("alice", ["gpt-4o", "gpt-4o-mini"])):
            for port in ports:
                url = f"http://127.0.0.1:{port}/v1/models"
                async with session.get(url, headers={"Authorization": f"Bearer {made[name]}"}) as resp:
                    assert sorted(m["id"] for m in (await resp.json())["data"]) == listed, (name, port)
        no = await post(session, ports[1], made["bob"], "gpt-4o")
        assert (no.status, no.code) == (403, "model_not_permitted"), no
        assert "trust level 1 may not use the model 'gpt-4o'" in no.message
        bob = await asyncio.gather(*[post(session, ports[i % 2], made["bob"]) for i in range(6)])
        alice = await asyncio.gather(
            *[post(session, ports[i % 2], made["alice"], ("gpt-4o", "gpt-4o-mini")[i % 2]) for i in range(10)]
        )
    for answers, limit in ((bob, 2), (alice, 4)):
        assert sum(a.status == 200 for a in answers) == limit, [(a.status, a.code) for a in answers]
        assert {(a.status, a.code) for a in answers if a.status != 200} == {(429, "user_daily_limit")}
    assert len(fake_upstream.requests) == 6
