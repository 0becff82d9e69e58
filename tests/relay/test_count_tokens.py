"""`POST /v1/messages/count_tokens` goes through the balancer like any call: it counts toward the
caller's requests per minute, never toward a key's daily limit, reaches only keys that could serve
now under their own model name, and leaves a usage row that bills nothing. With the `anthropic`
SDK against real PostgreSQL and Redis; the fake upstream answers count_tokens like Anthropic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER, Balancer
from gateway.relay.picks import Candidate, UserLimits
from tests.relay.test_balancer import rkey
from tests.support.fake_upstream import Failure, FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import user_with_token

MODEL = "claude-fake-1"
UPSTREAM_NAME = "claude-fake-1-20250101"  # what the donors' upstream calls it
BODY: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 400}]}
ESTIMATE = 100 + 4  # the local estimate of BODY (about 4 bytes a token)
COUNT = "/v1/messages/count_tokens"


Make = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> AsyncIterator[Make]:
    """A gateway with these `limits`; its SDK clients are closed after the test."""
    made: list[Gateway] = []

    async def build(**limits: Any) -> Gateway:
        app = create_app(gateway_config(config, **limits))
        client = await aiohttp_client(app)
        donor, _ = await user_with_token(pool, "donor")
        _, token = await user_with_token(pool, "caller")
        made.append(Gateway(client, app, token, donor, pool, app[appkeys.config]))
        return made[-1]

    yield build
    for gw in made:
        for sdk in gw.clients:
            await sdk.close()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.models = [UPSTREAM_NAME]
    return fake_upstream


async def add(gw: Gateway, up: FakeUpstream, name: str, api_format: str = "anthropic", **kw: Any) -> str:
    api_key, models = f"sk-ant-{name}-0000000000", [f"{MODEL}={UPSTREAM_NAME}"]
    return await gw.add_key(up, name=name, api_key=api_key, models=models, api_format=api_format, **kw)


def claude(gw: Gateway, token: str | None = None) -> anthropic.AsyncAnthropic:
    sdk = anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), auth_token=token or gw.token, max_retries=0)
    gw.clients.append(sdk)  # type: ignore[arg-type]
    return sdk


def keys_asked(up: FakeUpstream) -> list[str]:
    return [r.headers["x-api-key"] for r in up.calls(COUNT)]


async def counted_today(gw: Gateway, *key_ids: str) -> dict[str, int]:
    return await gw.app[BALANCER].usage_today(list(key_ids))


async def test_count_tokens_counts_toward_the_callers_requests_per_minute(make: Make, upstream: FakeUpstream) -> None:
    gw = await make(user_requests_per_minute=2)
    key_id = await add(gw, upstream, "a")
    sdk = claude(gw)
    for _ in range(2):
        assert (await sdk.messages.count_tokens(**BODY)).input_tokens == 42
    with pytest.raises(anthropic.RateLimitError) as refused:
        await sdk.messages.count_tokens(**BODY)
    error = refused.value.response
    assert error.status_code == 429 and int(error.headers["retry-after"]) >= 1
    assert refused.value.body == {  # Anthropic's shape, our words
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Too many requests this minute."},
    }
    assert len(upstream.calls(COUNT)) == 2, "the refused call reached no donor"
    with pytest.raises(anthropic.RateLimitError):  # the minute is used up for every route
        await sdk.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert upstream.calls("/v1/messages") == []
    assert await counted_today(gw, key_id) == {key_id: 0}, "never toward the key's daily limit"


async def test_count_tokens_asks_only_a_key_that_could_serve_now_under_its_own_name(
    make: Make, upstream: FakeUpstream
) -> None:
    gw = await make()
    spent = await add(gw, upstream, "spent", daily_limit=1)
    cooling = await add(gw, upstream, "cooling")
    ready = await add(gw, upstream, "ready", daily_limit=3)
    balancer = gw.app[BALANCER]
    await balancer.cool_down(cooling, 600)
    await balancer.cool_down(ready, 600)  # until the spent key has spent its one call
    await claude(gw).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert [r.headers["x-api-key"] for r in upstream.calls("/v1/messages")] == ["sk-ant-spent-0000000000"]
    await balancer.clear(ready)

    for _ in range(5):  # more than the ready key's daily limit: none of them reserves a call
        assert (await claude(gw).messages.count_tokens(**BODY)).input_tokens == 42
    assert keys_asked(upstream) == ["sk-ant-ready-0000000000"] * 5
    assert {r.body["model"] for r in upstream.calls(COUNT)} == {UPSTREAM_NAME}, "the key's own name went upstream"
    assert await counted_today(gw, spent, cooling, ready) == {spent: 1, cooling: 0, ready: 0}

    logs = [r for r in await gw.logs() if r["api_endpoint"] == COUNT]
    assert len(logs) == 5
    for row in logs:
        assert (str(row["shared_key_id"]), row["status"], row["success"]) == (ready, "ok", True)
        assert not row["committed"] and row["model_used"] == MODEL
        tokens = (row["prompt_tokens"], row["completion_tokens"], row["tokens_used"], row["cost_estimate"])
        assert tokens == (None, None, None, None), "no tokens billed to the key's day"
    key = await gw.key_row(ready)
    assert (key["usage_count_today"], key["total_usage_count"], key["total_tokens"]) == (0, 0, 0)


async def test_count_tokens_is_estimated_locally_when_no_anthropic_key_can_serve(
    make: Make, upstream: FakeUpstream
) -> None:
    gw = await make()
    await add(gw, upstream, "openai-format", api_format="openai")
    assert (await claude(gw).messages.count_tokens(**BODY)).input_tokens == ESTIMATE
    cooling = await add(gw, upstream, "cooling")
    await gw.app[BALANCER].cool_down(cooling, 600)
    assert (await claude(gw).messages.count_tokens(**BODY)).input_tokens == ESTIMATE
    assert upstream.requests == [] and await gw.logs() == []


async def test_a_failed_count_is_recorded_and_cools_the_key_and_the_next_key_answers(
    make: Make, upstream: FakeUpstream
) -> None:
    gw = await make()
    first, second = await add(gw, upstream, "a"), await add(gw, upstream, "b")
    upstream.fail_next(Failure(status=429, retry_after="120", path=COUNT))
    assert (await claude(gw).messages.count_tokens(**BODY)).input_tokens == 42
    rows = await gw.logs()
    assert [(r["status"], r["http_status"], r["committed"], r["attempt"]) for r in rows] == [
        ("upstream_error", 429, False, 1),
        ("ok", 200, False, 2),
    ]
    limited = str(rows[0]["shared_key_id"])
    assert {limited, str(rows[1]["shared_key_id"])} == {first, second}
    assert 100 < (await gw.app[BALANCER].cooling([limited]))[limited] <= 120, "the 429 cooled its key"
    assert await counted_today(gw, first, second) == {first: 0, second: 0}, "nothing given back, nothing taken"

    upstream.fail_next(Failure(status=500, path=COUNT))  # the only key left fails: estimated locally
    assert (await claude(gw).messages.count_tokens(**BODY)).input_tokens == ESTIMATE
    assert [r["status"] for r in await gw.logs()][-1] == "upstream_error"


async def test_a_pick_that_only_chooses_reserves_nothing_and_counts_the_minute(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    b = Balancer(redis, prefix=redis_prefix, timezone="UTC")
    keys = [Candidate("spent", 1), Candidate("k2", 1)]
    limits = UserLimits(daily=1, per_minute=3, streams=1)
    kw: dict[str, Any] = {"user_id": "u1", "limits": limits, "stream": False}
    spent = await b.pick(keys[:1], request_id="r0", **{**kw, "user_id": "u0"})
    assert (spent.outcome, spent.key_id) == ("ok", "spent")
    chosen = [await b.pick(keys, request_id=f"r{i}", reserve=False, **kw) for i in range(3)]
    assert [(p.outcome, p.key_id, p.used_today) for p in chosen] == [("ok", "k2", 0)] * 3, "one call left, never taken"
    refused = await b.pick(keys, request_id="r4", reserve=False, **kw)
    assert refused.outcome == "user_rpm", "the minute counts and is enforced"
    assert await b.usage_today() == {"spent": 1}
    assert await redis.hget(rkey(redis_prefix, f"udaily:{refused.day}"), "u1") is None, "the user's day is untouched"
