"""Each key's spend per day (issue #17): the flusher's `key_usage_daily` rollup and the /keys page's
spend today and 30-day sparkline, read from it."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.relay import usage
from gateway.relay.prices import Price, Prices
from gateway.relay.usage import UsageLog
from gateway.store import users
from gateway.web.board import charts
from tests.support.fake_linuxdo import Site, provider, site  # noqa: F401 (fixtures)
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token
from tests.support.tokenusage import call

MODEL = "spend-test-model"
PRICE = Price(1.0, 4.0, source="config")  # USD per million tokens


def record(n: int, key_id: str, donor: str, day: date, prompt: int, completion: int, *, committed: bool = True):  # type: ignore[no-untyped-def]
    return call(
        None, donor, day, prompt, completion, committed=committed, key_id=key_id, model=MODEL, request_id=f"spend-{n}"
    )


def usd(prompt: int, completion: int) -> Decimal:
    return (Decimal(prompt) + Decimal(completion) * 4) / 1_000_000


async def rollup(conn: asyncpg.Connection) -> dict[tuple[str, date], tuple[int, Decimal]]:
    rows = await conn.fetch("SELECT shared_key_id::text AS id, day, calls, value_usd FROM key_usage_daily")
    return {(r["id"], r["day"]): (r["calls"], r["value_usd"]) for r in rows}


async def test_the_rollup_is_the_sum_of_the_committed_rows_once(
    pool: asyncpg.Pool, config: config_mod.Config, redis: aioredis.Redis, redis_prefix: str
) -> None:
    donor, _ = await user_with_token(pool, "donor")
    one = await add_key(pool, config, donor, "https://api.example.com/v1", name="one")
    two = await add_key(pool, config, donor, "https://api.example.com/v1", name="two")
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    records = [
        record(1, one.id, donor.id, d1, 100, 10),
        record(2, one.id, donor.id, d1, 200, 20),
        record(3, one.id, donor.id, d2, 300, 30),
        record(4, two.id, donor.id, d1, 400, 40),
        record(5, two.id, donor.id, d2, 500, 50),
        record(6, two.id, donor.id, d2, 600, 60),
        record(7, two.id, donor.id, d2, 700, 70, committed=False),  # not served: not counted
    ]
    log = UsageLog(pool, redis, redis_prefix, Prices(pool, {MODEL: PRICE}))
    expected = {
        (one.id, d1): (2, usd(100, 10) + usd(200, 20)),
        (one.id, d2): (1, usd(300, 30)),
        (two.id, d1): (1, usd(400, 40)),
        (two.id, d2): (2, usd(500, 50) + usd(600, 60)),
    }
    for attempt in range(2):  # the same batch twice (a retry): nothing changes
        for r in records:
            log.add(r)
        assert await log.flush_once()
        async with pool.acquire() as conn:
            assert await rollup(conn) == expected, f"write {attempt + 1}"
            # ...and it is the sum of the committed rows in the log, key by key.
            logged = await conn.fetch(
                "SELECT shared_key_id::text AS id, count(*) AS calls, sum(cost_estimate) AS value FROM key_usage_logs"
                " WHERE committed GROUP BY 1"
            )
            assert {r["id"]: (r["calls"], r["value"]) for r in logged} == {
                k: (
                    sum(c for (kk, _), (c, _) in expected.items() if kk == k),
                    sum(v for (kk, _), (_, v) in expected.items() if kk == k),
                )
                for k in (one.id, two.id)
            }
            assert await conn.fetchval("SELECT count(*) FROM key_usage_logs") == 7
    async with pool.acquire() as conn:  # a deleted key's days go with it
        await conn.execute("DELETE FROM shared_keys WHERE id = $1", uuid.UUID(two.id))
        assert set(await rollup(conn)) == {(one.id, d1), (one.id, d2)}


def _articles(html: str) -> dict[str, str]:
    return dict(re.findall(r'<article class="card key[^"]*" data-key-id="([^"]+)"(.*?)</article>', html, re.S))


async def test_the_keys_page_shows_spend_today_and_30_days_from_the_rollup(
    site: Site,  # noqa: F811
    fake_upstream: FakeUpstream,
) -> None:
    assert (await site.sign_in("alice")).status == 303
    async with site.pool.acquire() as conn:
        me = await users.get_by_username(conn, "alice")
    assert me is not None
    busy = await add_key(site.pool, site.config, me, fake_upstream.base_url, name="busy")
    quiet = await add_key(site.pool, site.config, me, fake_upstream.base_url, name="quiet")
    idle = await add_key(site.pool, site.config, me, fake_upstream.base_url, name="idle")
    today = datetime.now(ZoneInfo(site.config.balancer.timezone)).date()
    records = [
        record(1, busy.id, me.id, today, 100_000, 2_500),  # 0.11
        record(2, busy.id, me.id, today, 300_000, 2_500),  # 0.31: 0.42 today
        record(3, busy.id, me.id, today - timedelta(days=3), 50_000, 0),  # 0.05
        record(4, busy.id, me.id, today - timedelta(days=29), 20_000, 0),  # 0.02, the chart's first day
        record(5, busy.id, me.id, today - timedelta(days=30), 900_000, 0),  # before the 30 days
        record(6, quiet.id, me.id, today - timedelta(days=1), 70_000, 0),  # 0.07 yesterday, none today
    ]
    async with site.pool.acquire() as conn:
        await usage.write(conn, records, Prices(site.pool, {MODEL: PRICE}))
        stored = await rollup(conn)
    resp = await site.client.get("/keys")
    assert resp.status == 200
    articles = _articles(await resp.text())
    assert set(articles) == {busy.id, quiet.id, idle.id}

    for key, today_usd in ((busy, "0.42"), (quiet, "0.00"), (idle, "0.00")):
        article = articles[key.id]
        assert f'<strong data-field="spend">${today_usd}</strong>' in article
        svgs = re.findall(r"<svg .*?</svg>", article, re.S)
        assert len(svgs) == 1, key.name
        values = [Decimal(v) for v in re.search(r'data-values="([^"]+)"', svgs[0])[1].split()]  # type: ignore[index]
        days = [today - timedelta(days=29 - i) for i in range(30)]
        assert values == [stored.get((key.id, d), (0, Decimal(0)))[1] for d in days], key.name
        # The line drawn is the one for those amounts.
        drawn = re.search(r'<polyline class="spark-line" points="([^"]+)"', svgs[0])[1]  # type: ignore[index]
        expect = re.search(r'points="([^"]+)"', str(charts.sparkline([float(v) for v in values], "x")))[1]  # type: ignore[index]
        assert drawn == expect
    busy_values = [Decimal(v) for v in re.search(r'data-values="([^"]+)"', articles[busy.id])[1].split()]  # type: ignore[index]
    assert (
        busy_values[-1] == Decimal("0.42") and busy_values[-4] == Decimal("0.05") and busy_values[0] == Decimal("0.02")
    )
    assert sum(busy_values) == Decimal("0.49"), "the day before the 30 is left out"
    assert re.search(r'data-values="([^"]+)"', articles[quiet.id])[1].split()[-2] == "0.070000"  # type: ignore[index]
    assert "Spend per day (USD), last 30 days: $0.49 in total" in articles[busy.id] or "共 $0.49" in articles[busy.id]
