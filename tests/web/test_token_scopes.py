"""A token's scopes through `POST /api/tokens` and the /tokens page: each bad field refused by
name with nothing created, the stored values listed back with today's use from the rollup."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.store import users
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key
from tests.support.tokenusage import call, flush

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures

SOON = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
FULL = {
    "label": "ci bot",
    "models": ["gpt-4o-mini", "fast"],
    "expires_at": SOON.isoformat(),
    "daily_requests": 200,
    "requests_per_minute": 10,
    "daily_budget_usd": "2.50",
    "allowed_ips": ["203.0.113.0/24", "2001:db8::1", "127.0.0.1"],
}


async def signed_in(site: Site) -> dict[str, str]:
    assert (await site.sign_in("alice")).status == 303
    return await site.write_headers()


async def token_rows(site: Site) -> int:
    async with site.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM api_tokens"))


async def test_every_field_is_stored_and_listed_with_todays_use(site: Site) -> None:
    headers = await signed_in(site)
    created = await site.client.post("/api/tokens", json=FULL, headers=headers)
    assert created.status == 201, await created.text()
    body = await created.json()
    expected = {
        **FULL,
        "expires_at": SOON.isoformat(),
        "allowed_ips": ["203.0.113.0/24", "2001:db8::1/128", "127.0.0.1/32"],
        "calls_today": 0,
        "spent_today_usd": "0.000000",
    }
    assert {k: body[k] for k in expected} == expected

    today = date.fromisoformat(site.app[BALANCER].today())
    async with site.pool.acquire() as conn:
        user_id = str(await conn.fetchval("SELECT user_id FROM api_tokens"))
    calls = [call(body["id"], user_id, today, 1000, 500) for _ in range(3)]
    calls += [call(body["id"], user_id, today - timedelta(days=1), 10_000, 0)]  # yesterday: not today's
    calls += [call(body["id"], user_id, today, 1000, 500, committed=False)]  # never reached the client
    await flush(site.pool, calls)

    (listed,) = (await (await site.client.get("/api/tokens")).json())["tokens"]
    async with site.pool.acquire() as conn:
        want = await conn.fetchrow(
            "SELECT count(*) AS calls, sum(cost_estimate) AS usd FROM key_usage_logs"
            " WHERE token_id = $1::uuid AND committed AND created_at IS NOT NULL AND request_id = ANY($2)",
            body["id"],
            [c.request_id for c in calls[:3]],
        )
    assert listed["calls_today"] == want["calls"] == 3
    assert Decimal(listed["spent_today_usd"]) == want["usd"] == Decimal("0.006")  # 3 × (1000×1 + 500×2)/1e6
    assert {k: listed[k] for k in FULL} == {k: expected[k] for k in FULL}


async def test_nothing_is_required_and_null_means_no_limit(site: Site) -> None:
    headers = await signed_in(site)
    body = await (await site.client.post("/api/tokens", json={"models": None}, headers=headers)).json()
    assert {k: body[k] for k in FULL} == {
        "label": "",
        "models": [],
        "expires_at": None,
        "daily_requests": None,
        "requests_per_minute": None,
        "daily_budget_usd": None,
        "allowed_ips": [],
    }


PAST = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
BAD: list[tuple[str, Any]] = [
    ("label", 5),
    ("label", "x" * 65),
    ("models", "gpt-4o"),
    ("models", ["gpt-4o", ""]),
    ("models", ["a=b"]),
    ("expires_at", PAST),
    ("expires_at", "2030-01-01T00:00:00"),  # no zone
    ("expires_at", "next tuesday"),
    ("expires_at", 1893456000),
    ("daily_requests", 0),
    ("daily_requests", -5),
    ("daily_requests", "10"),
    ("daily_requests", True),
    ("requests_per_minute", 0),
    ("requests_per_minute", 1.5),
    ("daily_budget_usd", 0),
    ("daily_budget_usd", "-1"),
    ("daily_budget_usd", "1.234"),
    ("daily_budget_usd", "lots"),
    ("allowed_ips", ["10.0.0.300"]),
    ("allowed_ips", ["10.0.0.7/8"]),  # host bits under the mask
    ("allowed_ips", "10.0.0.0/8"),
    ("allowed_ips", ["example.com"]),
    ("scopes", ["all"]),  # unknown
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}"[:40] for f, v in BAD])
async def test_a_bad_field_is_refused_by_name_and_nothing_is_created(site: Site, field: str, value: Any) -> None:
    headers = await signed_in(site)
    body = {**FULL, field: value}
    resp = await site.client.post("/api/tokens", json=body, headers=headers)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == field
    assert await token_rows(site) == 0


async def test_the_page_has_the_limits_form_and_lists_scopes_and_todays_use(site: Site) -> None:
    headers = await signed_in(site)
    body = await (await site.client.post("/api/tokens", json=FULL, headers=headers)).json()
    await site.client.post("/api/tokens", json={"label": "open"}, headers=headers)
    today = date.fromisoformat(site.app[BALANCER].today())
    async with site.pool.acquire() as conn:
        user_id = str(await conn.fetchval("SELECT user_id FROM api_tokens LIMIT 1"))
    await flush(site.pool, [call(body["id"], user_id, today, 1_000_000, 1_000_000) for _ in range(2)])  # $3 each

    en = await (await site.client.get("/tokens")).text()
    assert "<summary>Limits</summary>" in en and 'name="allowed_ips"' in en and 'name="expires_at"' in en
    assert "models: gpt-4o-mini, fast" in en and "200 calls a day" in en and "10 calls a minute" in en
    assert "$2.50 a day" in en and "IPs: 203.0.113.0/24, 2001:db8::1/128, 127.0.0.1/32" in en
    assert "2 calls, $6.00" in en and "0 calls, $0.00" in en and ">none<" in en

    zh = await (await site.client.get("/tokens", headers={"Accept-Language": "zh-CN"})).text()
    assert "<summary>限制</summary>" in zh and "允许的 IP" in zh and "每日预算（美元）" in zh
    assert "模型：gpt-4o-mini, fast" in zh and "每日 200 次" in zh and "每分钟 10 次" in zh
    assert "每日 $2.50" in zh and "2 次，$6.00" in zh and "不限" in zh


async def test_a_token_made_on_the_api_is_held_to_its_scope_on_v1(site: Site, fake_upstream: FakeUpstream) -> None:
    """The two halves together: the scope a member sets through /api/tokens is what the relay
    enforces on /v1 (models listed and refused, the daily cap counted in the pick)."""
    headers = await signed_in(site)
    async with site.pool.acquire() as conn:
        donor = await users.get_by_username(conn, "alice")
    assert donor is not None
    await add_key(site.pool, site.config, donor, fake_upstream.base_url, models=["gpt-4o-mini", "gpt-4o"])
    await site.app[KEY_INDEX].reload()
    scope = {"label": "bot", "models": ["gpt-4o-mini"], "daily_requests": 2}
    created = await site.client.post("/api/tokens", json=scope, headers=headers)
    assert created.status == 201, await created.text()
    bearer = {"Authorization": f"Bearer {(await created.json())['token']}"}
    listed = await site.client.get("/v1/models", headers=bearer)
    assert [m["id"] for m in (await listed.json())["data"]] == ["gpt-4o-mini"]
    other = await site.client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []}, headers=bearer)
    assert (other.status, (await other.json())["error"]["code"]) == (403, "model_not_permitted")
    statuses = []
    for _ in range(3):
        resp = await site.client.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=bearer
        )
        statuses.append((resp.status, (await resp.json()).get("error", {}).get("code")))
    assert statuses == [(200, None), (200, None), (429, "token_daily_limit")]
    assert len(fake_upstream.calls("/v1/chat/completions")) == 2
