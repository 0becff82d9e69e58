"""Prices and costs (issue #17): the price library, overrides, every row's cost_estimate."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.app import create_app
from gateway.net.events import BUS
from gateway.relay import prices, usage
from gateway.relay.prices import PRICES, Price, Prices, cost
from gateway.relay.usage import UsageRecord, UsageStatus
from gateway.store import tokens, users
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import add_key, user_with_token

DAY = date(2026, 3, 1)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def record(n: int, key_id: str | None, donor: str | None, **kw: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "request_id": f"req-{n}",
        "attempt": 1,
        "day": DAY,
        "created_at": datetime.now(UTC),
        "shared_key_id": key_id,
        "user_id": donor,
        "donor_id": donor,
        "api_endpoint": "/v1/chat/completions",
        "model": "gpt-4o",
        "status": UsageStatus.OK,
        "success": True,
        "committed": True,
        "prompt_tokens": 1000,
        "completion_tokens": 200,
    }
    return UsageRecord(**{**base, **kw})


def test_the_library_knows_openai_and_anthropic_prices_with_their_cache_prices() -> None:
    gpt = prices.library_price("gpt-4o")
    assert gpt is not None and gpt.input > 0 and gpt.output > gpt.input and gpt.cache_read is not None
    claude = prices.library_price("claude-sonnet-4-5")
    assert claude is not None and claude.cache_read is not None and claude.cache_write is not None
    assert prices.library_price("openai/gpt-4o") == gpt, "a provider/ prefix is understood"
    assert prices.library_price("no-such-model-here") is None


def test_cost_of_an_openai_usage_with_cached_prompt_tokens() -> None:
    # OpenAI: prompt_tokens 1,000 of which 600 cached (prompt_tokens_details.cached_tokens), 200 out.
    p = Price(input=2.5, output=10.0, cache_read=1.25)
    got = cost(p, 1000, 200, cache_read=600)
    assert got == pytest.approx((400 * 2.5 + 600 * 1.25 + 200 * 10.0) / 1e6)
    lib = prices.library_price("gpt-4o")
    assert lib is not None
    expected = (400 * lib.input + 600 * (lib.cache_read or 0) + 200 * lib.output) / 1e6
    assert cost(lib, 1000, 200, cache_read=600) == pytest.approx(expected)


def test_cost_of_an_anthropic_usage_with_cache_reads_and_writes() -> None:
    # Anthropic: input_tokens 100 + cache_read 3,000 + cache_creation 1,000 (prompt 4,100), 50 out.
    p = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)
    got = cost(p, 4100, 50, cache_read=3000, cache_write=1000)
    assert got == pytest.approx((100 * 3.0 + 3000 * 0.3 + 1000 * 3.75 + 50 * 15.0) / 1e6)
    assert cost(Price(1.0, 2.0), 100, 10, cache_read=50, cache_write=50) == pytest.approx((100 + 20) / 1e6), (
        "without cache prices the cache tokens cost the input price"
    )
    assert cost(None, 10, 10) is None and cost(p, None, None) is None


def test_configured_prices_override_the_library() -> None:
    table = Prices(None, {"gpt-4o": Price(1.0, 2.0, source="config")})
    assert table.get("gpt-4o") == Price(1.0, 2.0, source="config")
    assert table.get("gpt-4o-mini") is not None and table.get("gpt-4o-mini").source == "library"  # type: ignore[union-attr]


def test_the_config_reads_a_table_of_prices(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[prices."my-model"]\ninput = 1\noutput = 2.5\ncache_read = 0.1\n')
    cfg = config_mod.load(path, env={})
    assert cfg.prices == {"my-model": {"input": 1.0, "output": 2.5, "cache_read": 0.1, "cache_write": None}}
    with pytest.raises(config_mod.ConfigError, match="input and output"):
        config_mod.load(None, env={"SHAREKEY_PRICES": '{"x": {"input": 1}}'})


async def test_every_row_gets_its_cost_and_the_donor_day_its_value(
    pool: asyncpg.Pool, config: config_mod.Config, redis: aioredis.Redis, redis_prefix: str
) -> None:
    donor, _ = await user_with_token(pool, "donor")
    key = await add_key(pool, config, donor, "https://api.example.com/v1")
    table = Prices(pool, {"gpt-4o": Price(2.5, 10.0, 1.25, source="config")})
    log = usage.UsageLog(pool, redis, redis_prefix, table)
    log.add(record(1, key.id, donor.id, prompt_tokens=1000, completion_tokens=200, cache_read_tokens=600))
    log.add(  # asked for "sonnet", the upstream for claude-sonnet-4-5: priced on the latter
        record(
            2,
            key.id,
            donor.id,
            model="sonnet",
            upstream_model="claude-sonnet-4-5",
            prompt_tokens=4100,
            completion_tokens=50,
            cache_read_tokens=3000,
            cache_creation_tokens=1000,
        )
    )
    log.add(record(3, key.id, donor.id, usage_estimated=True, prompt_tokens=40, completion_tokens=7))
    log.add(record(4, key.id, donor.id, committed=False, success=False, prompt_tokens=None, completion_tokens=None))
    log.add(record(5, key.id, donor.id, model="unpriced-model-x"))
    assert await log.flush_once()
    async with pool.acquire() as conn:
        rows = {
            r["request_id"]: r
            for r in await conn.fetch("SELECT request_id, cost_estimate, usage_estimated FROM key_usage_logs")
        }
        value = await conn.fetchval("SELECT value_usd FROM donor_usage_daily WHERE donor_id = $1", donor.id)
    claude = prices.library_price("claude-sonnet-4-5")
    assert rows["req-1"]["cost_estimate"] == pytest.approx(Decimal((400 * 2.5 + 600 * 1.25 + 200 * 10) / 1e6))
    assert float(rows["req-2"]["cost_estimate"]) == pytest.approx(cost(claude, 4100, 50, 3000, 1000))
    assert rows["req-3"]["usage_estimated"] and float(rows["req-3"]["cost_estimate"]) == pytest.approx(
        (40 * 2.5 + 7 * 10) / 1e6
    )
    assert rows["req-4"]["cost_estimate"] is None and rows["req-5"]["cost_estimate"] is None
    assert value == sum(r["cost_estimate"] or 0 for r in rows.values())


async def test_a_price_override_reaches_every_process_within_a_second(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    cfg = gateway_config(config)
    one_app, two_app = create_app(cfg), create_app(cfg)
    one, two = await aiohttp_client(one_app), await aiohttp_client(two_app)
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    async with pool.acquire() as conn:
        admin = await users.add_user(conn, "root", admin=True)
        admin_token, _ = await tokens.create(conn, admin.id, "t")
    await asyncio.wait_for(two_app[BUS].subscribed.wait(), 5)
    assert two_app[PRICES].get("gpt-4o").source == "library"  # type: ignore[union-attr]

    put = {"prices": {"gpt-4o": {"input": 100, "output": 1000}}}
    refused = await one.put("/api/prices", json=put, headers={"Authorization": f"Bearer {token}"})
    assert refused.status == 403
    bad = await one.put(
        "/api/prices",
        json={"prices": {"x": {"input": -1, "output": 1}}},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "prices"
    t0 = time.monotonic()
    ok = await one.put("/api/prices", json=put, headers={"Authorization": f"Bearer {admin_token}"})
    assert ok.status == 200
    body = await ok.json()
    assert body["prices"]["gpt-4o"] == {"input": 100.0, "output": 1000.0, "cache_read": None, "cache_write": None}
    while two_app[PRICES].get("gpt-4o").source != "admin":  # type: ignore[union-attr]
        assert time.monotonic() - t0 < 1.0, "the other process has the price within a second"
        await asyncio.sleep(0.02)

    # A call served by the second process is costed at the new price.
    gw = Gateway(two, two_app, token, donor, pool, cfg)
    fake_upstream.models = ["gpt-4o"]
    await gw.add_key(fake_upstream, models=["gpt-4o"])
    assert (await gw.post("/v1/chat/completions", {"model": "gpt-4o", **CHAT})).status == 200
    [row] = await gw.logs()
    expected = (row["prompt_tokens"] * 100 + row["completion_tokens"] * 1000) / 1e6
    assert float(row["cost_estimate"]) == pytest.approx(expected)
    got = await one.get("/api/prices?model=gpt-4o,gpt-4o-mini", headers={"Authorization": f"Bearer {admin_token}"})
    effective = (await got.json())["effective"]
    assert effective["gpt-4o"]["source"] == "admin" and effective["gpt-4o-mini"]["source"] == "library"


async def test_flusher_cost_per_row(
    pool: asyncpg.Pool, config: config_mod.Config, redis: aioredis.Redis, redis_prefix: str
) -> None:
    """The flusher's time per row with and without costs (printed; run with -s to see it)."""
    donor, _ = await user_with_token(pool, "donor")
    key = await add_key(pool, config, donor, "https://api.example.com/v1")
    table = Prices(pool, {})
    table.get("gpt-4o")
    n, rounds = 1000, 5
    timings: dict[str, float] = {}
    for label, t in (("without", None), ("with", table), ("without", None), ("with", table)):
        best = float("inf")
        for r in range(rounds):
            batch = [
                dataclasses.replace(record(0, key.id, donor.id), request_id=f"{label}-{id(t)}-{r}-{i}-{time.time_ns()}")
                for i in range(n)
            ]
            async with pool.acquire() as conn:
                start = time.perf_counter()
                await usage.write(conn, batch, t)
                best = min(best, time.perf_counter() - start)
        timings[label] = best / n * 1e6
    print(f"\nflusher per row: without cost {timings['without']:.2f} µs, with cost {timings['with']:.2f} µs")
    assert timings["with"] < timings["without"] * 3


async def test_the_boards_values_equal_the_sum_of_the_rows(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any
) -> None:
    from datetime import timedelta

    from tests.web.test_board import Gateway as BoardGateway
    from tests.web.test_board import board_app, board_config, credit, donor

    cfg = board_config(config)
    app = board_app(cfg)
    gw = BoardGateway(await aiohttp_client(app), app, pool, cfg)
    today = gw.today
    _, alice_key = await donor(gw, "alice")  # type: ignore[arg-type]
    _, bob_key = await donor(gw, "bob")  # type: ignore[arg-type]
    for key, days_ago, calls, n_tokens in [(alice_key, 0, 3, 1000), (alice_key, 5, 2, 5000), (bob_key, 0, 4, 300)]:
        await credit(app, key, today - timedelta(days=days_ago), calls, tokens=n_tokens)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT donor_id::text AS donor, created_at, cost_estimate FROM key_usage_logs WHERE committed"
        )
    assert all(r["cost_estimate"] > 0 for r in rows), "gpt-4o-mini is priced by the library"
    total = {str(k.owner_id): float(sum(r["cost_estimate"] for r in rows if r["donor"] == k.owner_id))
             for k in (alice_key, bob_key)}  # fmt: skip
    week = await gw.board("7d")
    by_name = {d["username"]: d for d in week["donors"]}
    assert by_name["alice"]["value_usd"] == pytest.approx(total[alice_key.owner_id], abs=1e-6)
    assert by_name["bob"]["value_usd_total"] == pytest.approx(total[bob_key.owner_id], abs=1e-6)
    today_board = await gw.board("today")
    today_alice = next(d for d in today_board["donors"] if d["username"] == "alice")
    assert today_alice["value_usd"] < today_alice["value_usd_total"]
    assert today_board["totals"]["value_usd_today"] == pytest.approx(
        sum(d["value_usd"] for d in today_board["donors"]), abs=1e-6
    )
