"""Who a donated key serves, over HTTP (DESIGN.md "Donors' rules for their keys"): trust level and
named users, /v1/models per caller, and a pool at its donors' per-minute caps (503 pool_busy)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.keyindex import KEY_INDEX
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.seed import add_key, user_with_token

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def start(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, url: str, rules: dict) -> Any:
    cfg = gateway_config(config)
    donor, _ = await user_with_token(pool, "donor", trust_level=3)
    await add_key(pool, cfg, donor, url, models=["gpt-4o-mini"], rules=rules)
    app = create_app(cfg)
    client = await aiohttp_client(app)
    await app[KEY_INDEX].reload()
    return client


async def chat(client: Any, token: str) -> tuple[int, dict, Any]:
    resp = await client.post("/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers


async def models(client: Any, token: str) -> list[str]:
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    return [m["id"] for m in (await resp.json())["data"]]


async def test_min_trust_level_refuses_lower_members_and_hides_the_model(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    client = await start(config, pool, aiohttp_client, fake_upstream.base_url, {"min_trust_level": 2})
    _, low = await user_with_token(pool, "newcomer", trust_level=1)
    _, high = await user_with_token(pool, "regular", trust_level=2)
    status, body, _ = await chat(client, low)
    assert status == 403 and body["error"]["code"] == "model_not_permitted"
    assert "trust level 2" in body["error"]["message"] and "yours: 1" in body["error"]["message"]
    assert await models(client, low) == []
    calls = len(fake_upstream.requests)
    status, _, _ = await chat(client, high)
    assert status == 200 and len(fake_upstream.requests) == calls + 1
    assert await models(client, high) == ["gpt-4o-mini"]


async def test_allowed_users_serve_only_the_named_members(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    client = await start(config, pool, aiohttp_client, fake_upstream.base_url, {"allowed_users": ["Friend"]})
    _, friend = await user_with_token(pool, "friend")
    _, stranger = await user_with_token(pool, "stranger", trust_level=4)
    assert (await chat(client, friend))[0] == 200  # names compare case-folded
    status, body, _ = await chat(client, stranger)
    assert status == 403 and "named members" in body["error"]["message"]
    assert await models(client, stranger) == [] and await models(client, friend) == ["gpt-4o-mini"]


async def test_a_pool_at_its_rpm_cap_is_busy_with_retry_after(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    client = await start(config, pool, aiohttp_client, fake_upstream.base_url, {"rpm_limit": 2})
    _, token = await user_with_token(pool, "caller")
    assert [(await chat(client, token))[0] for _ in range(2)] == [200, 200]
    status, body, headers = await chat(client, token)
    assert status == 503 and body["error"]["code"] == "pool_busy"
    assert 50 <= int(headers["Retry-After"]) <= 60
    assert len(fake_upstream.requests) == 2  # the third never reached the key


async def test_concurrency_slot_is_freed_after_each_call(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    client = await start(config, pool, aiohttp_client, fake_upstream.base_url, {"max_concurrent": 1})
    _, token = await user_with_token(pool, "caller")
    statuses = []
    for _ in range(4):  # one at a time: each call's slot is back before the next (finish)
        statuses.append((await chat(client, token))[0])
        await asyncio.sleep(0.05)
    assert statuses == [200] * 4
