"""The balance endpoints (relay/balances.py): values equal to SQL over the token's usage rows
(written by the real flusher), OpenAI-shaped refusals, CORS like /v1 on every path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER
from gateway.store import tokens, users
from tests.support.tokenusage import call, flush

EXPIRES = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)


@dataclass
class Setup:
    client: TestClient
    pool: asyncpg.Pool
    scoped: str  # a token with a budget, an expiry and models
    scoped_id: str
    open: str  # a token without limits
    open_id: str
    today: date


@pytest.fixture
async def setup(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> Setup:
    client = await aiohttp_client(create_app(config))
    scope = {"models": ["gpt-4o-mini", "fast"], "expires_at": EXPIRES, "daily_budget_usd": Decimal("2.50")}
    async with pool.acquire() as conn:
        user = await users.add_user(conn, "alice")
        scoped, scoped_id = await tokens.create(conn, user.id, "chat app", scope)
        opened, open_id = await tokens.create(conn, user.id, "")
    today = date.fromisoformat(client.app[BALANCER].today())
    records = [call(scoped_id, user.id, today, 100_000, 50_000) for _ in range(4)]  # $0.20 each
    records += [call(scoped_id, user.id, today - timedelta(days=d), 1_000_000, 0) for d in (1, 2, 2, 40)]
    records += [call(scoped_id, user.id, today, 1_000_000, 0, committed=False)]  # not counted
    records += [call(open_id, user.id, today, 500_000, 0)]  # another token's
    await flush(pool, records)
    return Setup(client, pool, scoped, scoped_id, opened, open_id, today)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/v1/dashboard/billing/subscription", "/dashboard/billing/subscription"])
async def test_subscription_is_the_daily_budget_and_the_expiry(setup: Setup, path: str) -> None:
    resp = await setup.client.get(path, headers=auth(setup.scoped))
    assert resp.status == 200
    assert await resp.json() == {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": 2.5,
        "hard_limit_usd": 2.5,
        "system_hard_limit_usd": 2.5,
        "access_until": int(EXPIRES.timestamp()),
    }
    unlimited = await (await setup.client.get(path, headers=auth(setup.open))).json()
    assert unlimited["hard_limit_usd"] == 100000000 and unlimited["access_until"] == 0


async def sql_cents(setup: Setup, token_id: str, start: date, end: date) -> Decimal:
    async with setup.pool.acquire() as conn:
        return 100 * Decimal(
            await conn.fetchval(
                "SELECT coalesce(sum(value_usd), 0) FROM token_usage_daily WHERE token_id = $1::uuid"
                " AND day >= $2 AND day < $3",
                token_id,
                start,
                end,
            )
        )


@pytest.mark.parametrize("prefix", ["/v1", ""])
async def test_usage_is_cents_over_the_range_end_excluded(setup: Setup, prefix: str) -> None:
    today = setup.today

    async def usage(start: date, end: date) -> dict[str, Any]:
        query = {"start_date": start.isoformat(), "end_date": end.isoformat()}
        resp = await setup.client.get(f"{prefix}/dashboard/billing/usage", params=query, headers=auth(setup.scoped))
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    week = await usage(today - timedelta(days=6), today + timedelta(days=1))
    # 4 × $0.20 today + $1 yesterday + 2 × $1 two days ago; day 40 is outside; the open token's is not ours
    assert week["object"] == "list" and week["total_usage"] == pytest.approx(380.0)
    assert Decimal(str(week["total_usage"])) == await sql_cents(
        setup, setup.scoped_id, today - timedelta(days=6), today + timedelta(days=1)
    )
    costs = [d["line_items"][0]["cost"] for d in week["daily_costs"]]
    assert costs == pytest.approx([0, 0, 0, 0, 200, 100, 80]) and len(week["daily_costs"]) == 7
    assert sum(costs) == pytest.approx(week["total_usage"])

    assert (await usage(today - timedelta(days=6), today))["total_usage"] == pytest.approx(300.0)  # end excluded
    hundred = await usage(today - timedelta(days=99), today + timedelta(days=1))  # what neko-api-key-tool asks
    assert hundred["total_usage"] == pytest.approx(480.0)  # and day 40

    # Every usage row's cost, summed straight from the log, is what the rollup says over all days.
    async with setup.pool.acquire() as conn:
        logged = await conn.fetchval(
            "SELECT sum(cost_estimate) FROM key_usage_logs WHERE token_id = $1::uuid AND committed", setup.scoped_id
        )
    assert Decimal(str(hundred["total_usage"])) == 100 * logged


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"end_date": "2026-01-02"}, "start_date"),
        ({"start_date": "2026-01-02"}, "end_date"),
        ({"start_date": "yesterday", "end_date": "2026-01-02"}, "start_date"),
        ({"start_date": "2026-02-30", "end_date": "2026-03-02"}, "start_date"),
        ({"start_date": "2026-01-02", "end_date": "2026-01-02"}, "end_date"),  # empty range
        ({"start_date": "2026-01-01", "end_date": "2026-04-12"}, "end_date"),  # 101 days
    ],
)
async def test_bad_or_missing_dates_are_400_in_openais_shape(setup: Setup, query: dict[str, str], param: str) -> None:
    resp = await setup.client.get("/dashboard/billing/usage", params=query, headers=auth(setup.scoped))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"]
    assert error["code"] == f"invalid_{param}"


async def test_unpadded_dates_as_neko_api_key_tool_sends_them(setup: Setup) -> None:
    query = {"start_date": "2026-3-5", "end_date": "2026-6-13"}  # 100 days
    resp = await setup.client.get("/v1/dashboard/billing/usage", params=query, headers=auth(setup.scoped))
    assert resp.status == 200 and len((await resp.json())["daily_costs"]) == 100


async def test_new_apis_token_usage_is_todays_budget_and_use_in_its_quota_units(setup: Setup) -> None:
    resp = await setup.client.get("/api/usage/token", headers=auth(setup.scoped))
    assert resp.status == 200
    async with setup.pool.acquire() as conn:
        today_usd = await conn.fetchval(
            "SELECT value_usd FROM token_usage_daily WHERE token_id = $1::uuid AND day = $2",
            setup.scoped_id,
            setup.today,
        )
    assert today_usd == Decimal("0.8")
    assert await resp.json() == {
        "code": True,
        "message": "ok",
        "data": {
            "object": "token_usage",
            "name": "chat app",
            "total_granted": 1_250_000,  # $2.50 × 500000
            "total_used": int(today_usd * 500_000),
            "total_available": 1_250_000 - 400_000,
            "unlimited_quota": False,
            "model_limits": {"fast": True, "gpt-4o-mini": True},
            "model_limits_enabled": True,
            "expires_at": int(EXPIRES.timestamp()),
        },
    }
    unlimited = (await (await setup.client.get("/api/usage/token", headers=auth(setup.open))).json())["data"]
    assert unlimited["unlimited_quota"] is True and unlimited["total_used"] == 250_000
    assert unlimited["total_granted"] == 250_000 and unlimited["total_available"] == 0
    assert unlimited["model_limits"] == {} and unlimited["model_limits_enabled"] is False
    assert unlimited["expires_at"] == 0 and unlimited["name"] == ""


PATHS = [
    "/v1/dashboard/billing/subscription",
    "/dashboard/billing/subscription",
    "/v1/dashboard/billing/usage?start_date=2026-01-01&end_date=2026-01-02",
    "/dashboard/billing/usage?start_date=2026-01-01&end_date=2026-01-02",
    "/api/usage/token",
]


@pytest.mark.parametrize("path", PATHS)
async def test_a_missing_or_wrong_token_is_401_in_openais_shape(setup: Setup, path: str) -> None:
    for headers in ({}, auth("shk_" + "x" * 38), {"Authorization": "Basic abc"}):
        resp = await setup.client.get(path, headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"  # the page can read why


@pytest.mark.parametrize("path", PATHS)
async def test_cors_preflight_and_headers_like_v1(setup: Setup, path: str) -> None:
    preflight = await setup.client.options(
        path,
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    resp = await setup.client.get(path, headers={**auth(setup.scoped), "Origin": "https://chat.example"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_the_cookie_api_next_door_still_gets_no_cors(setup: Setup) -> None:
    resp = await setup.client.options("/api/tokens", headers={"Origin": "https://chat.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
