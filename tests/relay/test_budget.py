"""Donor budgets in money: `daily_budget_usd` through the API, the CLI and /keys, and a budget
stopping a key across two gateway processes within the stated overshoot."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.keyindex import KEY_INDEX
from tests.ops.test_cluster import env, start, wait_ready  # noqa: F401 (fixtures)
from tests.relay.test_messages import MODEL, add, upstream  # noqa: F401 (fixtures)
from tests.support.clirun import sharekey
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import add_key, user_with_token
from tests.web.test_keys_api import Api, api, api_config, make_api, people  # noqa: F401 (fixtures)

# A cheap model price: the fake upstream's replies (9 prompt + 12 completion tokens) cost $0.012.
PRICE = {"gpt-4o-mini": {"input": 0, "output": 1000}}
CALL_USD = 12 * 1000 / 1_000_000
BUDGET = Decimal("0.06")  # reached by the 5th call


@pytest.mark.parametrize(
    "value", [0, -1, 1_000_000.01, 1.234, "abc", True, [1], float("inf")], ids=lambda v: repr(v)[:12]
)
async def test_a_bad_budget_is_422_naming_it(api: Api, fake_upstream: FakeUpstream, value: Any) -> None:  # noqa: F811
    if isinstance(value, float) and math.isinf(value):
        body = {"name": "k", "base_url": fake_upstream.base_url, "api_key": "sk-x-1", "available_models": ["m"]}
        raw = json.dumps({**body, "daily_budget_usd": 1}).replace('"daily_budget_usd": 1', '"daily_budget_usd": 1e999')
        reply = await api.call("POST", "/api/shared-keys", raw=raw.encode())
    else:
        reply = await api.add(fake_upstream, daily_budget_usd=value)
    assert reply.status == 422, reply
    assert reply.body["error"]["field"] == "daily_budget_usd"
    assert await api.rows() == 0


async def test_the_budget_in_the_item_and_on_edit(api: Api, fake_upstream: FakeUpstream) -> None:  # noqa: F811
    added = await api.add(fake_upstream, daily_budget_usd=2.5)
    assert added.status == 201, added
    assert added.body["daily_budget_usd"] == 2.5 and added.body["spend_today_usd"] == 0
    key_id = added.body["id"]
    put = await api.call("PUT", "/api/shared-keys", {"id": key_id, "daily_budget_usd": 1000000})
    assert put.status == 200 and put.body["daily_budget_usd"] == 1_000_000
    cleared = await api.call("PUT", "/api/shared-keys", {"id": key_id, "daily_budget_usd": None})
    assert cleared.status == 200 and cleared.body["daily_budget_usd"] is None
    kept = await api.call("PUT", "/api/shared-keys", {"id": key_id, "daily_limit": 7})
    assert kept.body["daily_budget_usd"] is None
    bad = await api.call("PUT", "/api/shared-keys", {"id": key_id, "daily_budget_usd": 0.001})
    assert bad.status == 422 and bad.body["error"]["field"] == "daily_budget_usd"


def test_keys_add_takes_a_budget(cli_env: dict[str, str], config: config_mod.Config) -> None:
    assert sharekey("users", "add", "carol", env=cli_env).code == 0
    base = [
        "keys",
        "add",
        "--user",
        "carol",
        "--base-url",
        "https://api.example.com/v1",
        "--api-key",
        "sk-x-0000000001",
    ]
    bad = sharekey(*base, "--name", "b", "--models", "m", "--no-test", "--daily-budget-usd", "0", env=cli_env)
    assert bad.code == 2 and "--daily-budget-usd" in bad.err.strip().splitlines()[-1], bad
    unpriced = sharekey(*base, "--name", "a", "--models", "m", "--no-test", "--daily-budget-usd", "3.25", env=cli_env)
    assert unpriced.code == 2 and "no price is known for the model 'm'" in unpriced.err, unpriced
    ok = sharekey(
        *base, "--name", "a", "--models", "gpt-4o-mini", "--no-test", "--daily-budget-usd", "3.25", env=cli_env
    )
    assert ok.code == 0, ok.err

    async def stored() -> Any:
        conn = await asyncpg.connect(config.database.url)
        try:
            return await conn.fetchval(
                "SELECT daily_budget_usd FROM shared_keys WHERE id = $1", uuid.UUID(ok.out.strip())
            )
        finally:
            await conn.close()

    assert asyncio.run(stored()) == Decimal("3.25")


async def test_a_budget_stops_a_key_across_two_processes(
    start,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,  # type: ignore[no-untyped-def]
) -> None:
    """Traffic from 8 clients through two processes against one key with a $0.06 budget ($0.012
    a call): the key stops after the 5th call plus what was in flight or served before the flush
    and the `keys` event reached both processes. Bound checked: in flight + rate × 1 s."""
    env["SHAREKEY_PRICES"] = json.dumps(PRICE)
    donor, token = await user_with_token(pool, "donor")
    key = await add_key(pool, config, donor, fake_upstream.base_url, name="budgeted", daily_limit=100_000)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET daily_budget_usd = $2 WHERE id = $1", uuid.UUID(key.id), BUDGET)
    ports = [start(), start()]
    headers = {"Authorization": f"Bearer {token}"}
    workers, gap = 8, 0.01
    served: list[float] = []
    refused: list[int] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for port in ports:
            await wait_ready(session, port)
        began = time.monotonic()

        async def client(i: int) -> None:
            quiet_since = None
            while time.monotonic() - began < 15:
                url = f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions"
                async with session.post(url, json={"model": "gpt-4o-mini", "messages": []}) as resp:
                    await resp.read()
                    if resp.status == 200:
                        served.append(time.monotonic())
                        quiet_since = None
                    else:
                        refused.append(resp.status)
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since > 1.0:
                            return
                await asyncio.sleep(gap)

        await asyncio.gather(*[client(i) for i in range(workers)])

    within_budget = math.ceil(BUDGET / Decimal(str(CALL_USD)))
    assert len(served) > within_budget, "the budget was reached"
    assert refused, "and the key stopped serving"
    overshoot = len(served) - within_budget
    late = served[-1] - served[within_budget - 1]  # from the call that reached the budget to the last one served
    rate = len(served) / max(served[-1] - served[0], 1e-3)  # calls/s while the key served
    bound = workers + rate * 1.0
    print(
        f"\nbudget: {within_budget} calls; served {len(served)}; overshoot {overshoot} calls in {late:.3f} s; "
        f"rate {rate:.0f}/s; bound {bound:.0f}; refusals {sorted(set(refused))}"
    )
    assert overshoot <= bound
    # Every served call was counted: the key's spend today is the calls at their price.
    deadline = time.monotonic() + 5
    while True:
        spend = await pool.fetchval("SELECT spend_today_usd FROM shared_keys WHERE id = $1", uuid.UUID(key.id))
        if spend == Decimal(str(CALL_USD)) * len(served) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert spend == Decimal(str(CALL_USD)) * len(served) and spend >= BUDGET
    assert len(fake_upstream.requests) == len(served)


async def test_a_budget_on_a_key_with_an_unpriced_model_is_422_naming_the_model(
    api: Api,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    """It would never be enforced: calls of a model without a price cost nothing in the books."""
    fake_upstream.models.append("house-model-x")
    models = ["gpt-4o-mini", "house-model-x"]
    reply = await api.add(fake_upstream, available_models=models, daily_budget_usd=2)
    assert reply.status == 422, reply
    assert reply.body["error"]["field"] == "daily_budget_usd" and "'house-model-x'" in reply.body["error"]["message"]
    assert await api.rows() == 0
    added = await api.add(fake_upstream, available_models=models)  # no budget: fine
    assert added.status == 201, added
    put = await api.call("PUT", "/api/shared-keys", {"id": added.body["id"], "daily_budget_usd": 2})
    assert put.status == 422 and put.body["error"]["field"] == "daily_budget_usd"
    priced = await api.add(fake_upstream, name="priced", api_key="sk-priced-key-000000001", daily_budget_usd=2)
    assert priced.status == 201, priced
    grow = await api.call("PUT", "/api/shared-keys", {"id": priced.body["id"], "available_models": models})
    assert grow.status == 422 and "'house-model-x'" in grow.body["error"]["message"]


async def test_paid_calls_count_toward_the_budget_and_a_key_past_it_is_no_longer_picked(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    upstream: FakeUpstream,  # noqa: F811
    second_upstream: FakeUpstream,
) -> None:
    """Web searches at $0.01 each, three per answer: two answers pass a $0.05 budget (their tokens
    alone cost $0.000056). From then on only the key without a budget serves."""
    config = gateway_config(config, max_output_tokens=4096).replace("upstream", allowed_features=("web_search",))
    price = {"input": 1.0, "output": 2.0, "cache_read": None, "cache_write": None, "web_search_call": 0.01}
    config = dataclasses.replace(config, prices={MODEL: price})
    app = create_app(config)
    client = await aiohttp_client(app)
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    gw = Gateway(client, app, token, donor, pool, config)
    for up in (upstream, second_upstream):
        up.models, up.call_tools, up.server_tool_use = [MODEL], False, {"web_search_requests": 3}
    budgeted = await add(gw, upstream, "anthropic", name="budgeted")
    await add(gw, second_upstream, "anthropic", name="other")
    async with pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET daily_budget_usd = 0.05 WHERE id = $1", uuid.UUID(budgeted))
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 100}
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    for _ in range(10):
        if len(upstream.requests) == 2:
            break
        assert (await gw.post("/v1/messages", body)).status == 200
    assert len(upstream.requests) == 2
    await gw.flush()
    key = await gw.key_row(budgeted)
    assert key["spend_today_usd"] >= Decimal("0.06"), "the searches count toward the key's spend"
    await app[KEY_INDEX].reload()
    before = len(second_upstream.requests)
    for _ in range(4):
        assert (await gw.post("/v1/messages", body)).status == 200
    assert len(upstream.requests) == 2, "the key past its budget is no longer picked"
    assert len(second_upstream.requests) == before + 4
