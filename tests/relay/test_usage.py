"""Usage accounting: batches, aggregates, exactly once, and PostgreSQL refusing writes."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.relay import usage
from gateway.relay.usage import UsageLog, UsageRecord
from tests.support.seed import add_key, user_with_token

DAY = date(2026, 11, 23)


def record(key_id: str | None, donor: str, n: int, *, committed: bool = True, day: date = DAY) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{n}",
        attempt=1,
        day=day,
        created_at=datetime.now(UTC),
        shared_key_id=key_id,
        user_id=donor,
        donor_id=donor,
        api_endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        status="ok" if committed else "upstream_error",
        success=committed,
        committed=committed,
        prompt_tokens=10,
        completion_tokens=5,
    )


@pytest.fixture
async def setup(pool: asyncpg.Pool, config: config_mod.Config, redis: aioredis.Redis, redis_prefix: str):  # type: ignore[no-untyped-def]
    donor, _ = await user_with_token(pool, "donor")
    key = await add_key(pool, config, donor, "https://api.example.com/v1")
    return UsageLog(pool, redis, redis_prefix), donor.id, key.id


async def aggregates(pool: asyncpg.Pool, key_id: str) -> tuple[int, int, int, date | None]:
    async with pool.acquire() as conn:
        r = await conn.fetchrow("SELECT * FROM shared_keys WHERE id = $1", uuid.UUID(key_id))
    return r["usage_count_today"], r["total_usage_count"], r["total_tokens"], r["usage_day"]


async def test_batch_with_aggregates_exactly_once(setup, pool: asyncpg.Pool) -> None:  # type: ignore[no-untyped-def]
    log, donor, key = setup
    records = [record(key, donor, i) for i in range(5)] + [record(key, donor, 99, committed=False)]
    for r in records:
        log.add(r)
    assert await log.flush_once()
    assert await aggregates(pool, key) == (5, 5, 75, DAY), "failed attempts do not count"
    # The same records again (a retry after a lost answer): nothing changes.
    for r in records:
        log.add(r)
    assert await log.flush_once()
    assert await aggregates(pool, key) == (5, 5, 75, DAY)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM key_usage_logs") == 6


async def test_a_new_day_restarts_the_daily_count_and_late_records_do_not(setup, pool: asyncpg.Pool) -> None:  # type: ignore[no-untyped-def]
    log, donor, key = setup
    log.add(record(key, donor, 1))
    log.add(record(key, donor, 2, day=date(2026, 11, 24)))
    log.add(record(key, donor, 3, day=date(2026, 11, 24)))
    assert await log.flush_once()
    assert await aggregates(pool, key) == (2, 3, 45, date(2026, 11, 24))
    log.add(record(key, donor, 4))  # yesterday's, arriving late
    assert await log.flush_once()
    assert await aggregates(pool, key) == (2, 4, 60, date(2026, 11, 24))


async def test_deleted_key_keeps_the_donors_credit(setup, pool: asyncpg.Pool) -> None:  # type: ignore[no-untyped-def]
    log, donor, key = setup
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM shared_keys WHERE id = $1", uuid.UUID(key))
    log.add(record(key, donor, 1))
    assert await log.flush_once()
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT shared_key_id, donor_id FROM key_usage_logs")
    assert row["shared_key_id"] is None and str(row["donor_id"]) == donor


async def test_records_wait_out_a_refusing_database_then_land_once(
    setup,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    log, donor, key = setup
    monkeypatch.setattr(usage, "MAX_BUFFER", 10)
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE key_usage_logs RENAME TO key_usage_logs_away")
    for i in range(25):
        log.add(record(key, donor, i))
    assert not await log.flush_once(), "PostgreSQL refused: nothing is dropped"
    spooled = await redis.llen(log.spool_key)
    assert spooled > 0 and spooled + log.depth == 25, "over the bound, the oldest wait in Redis"
    await log.drain()  # shutdown while PostgreSQL is still away: everything goes to the spool
    assert log.depth == 0 and await redis.llen(log.spool_key) == 25

    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE key_usage_logs_away RENAME TO key_usage_logs")
    fresh = UsageLog(pool, redis, log.spool_key.split(":")[0])  # another process, after recovery
    assert await fresh.flush_once()
    assert await redis.llen(log.spool_key) == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(DISTINCT request_id) FROM key_usage_logs") == 25
        assert await conn.fetchval("SELECT count(*) FROM key_usage_logs") == 25
    assert (await aggregates(pool, key))[:2] == (25, 25)
