"""Once-per-cluster jobs: the lease, two real gateway processes sharing the jobs, key health checks
that take keys out and bring them back, the daily roll-over and retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.net import h1, keytest, redisnames
from gateway.ops import jobs
from gateway.store import sharedkeys
from tests.ops.test_shutdown import env, serve, wait_ready  # noqa: F401 - fixtures
from tests.support.clirun import sharekey
from tests.support.fake_upstream import Failure, FakeUpstream
from tests.support.seed import add_key, user_with_token

REJECTED = "the upstream rejected the key (HTTP 401)"


async def test_only_the_holder_changes_a_lease(redis: aioredis.Redis, redis_prefix: str) -> None:
    key = redisnames.job_lease(redis_prefix, "demo")
    assert key == f"{redis_prefix}:v1:{{{redis_prefix}}}:lease:demo"
    a, b = jobs.Lease(redis, key), jobs.Lease(redis, key)
    assert await a.take(5000)
    assert not await b.take(5000), "SET NX: one holder"
    assert not await b.release() and not await b.extend(60_000)
    assert await a.extend(60_000) and await a.left_ms() > 50_000
    assert await a.expire(200) and await a.left_ms() <= 200
    assert await a.release() and await a.left_ms() == -2
    assert await b.take(5000)


async def test_loops_in_many_processes_run_a_job_once_per_period(redis: aioredis.Redis, redis_prefix: str) -> None:
    runs: list[float] = []

    async def work() -> None:
        runs.append(time.monotonic())
        await asyncio.sleep(0.05)

    job = jobs.Job("tick", lambda _: 300, work)
    stop = asyncio.Event()
    loops = [asyncio.create_task(jobs.run_job(redis, redis_prefix, job, stop)) for _ in range(4)]
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*loops)
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert 5 <= len(runs) <= 8, runs
    assert min(gaps) >= 0.29, gaps


async def test_two_gateways_share_the_jobs_and_health_checks_bring_keys_back(
    serve: Any,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    pool: asyncpg.Pool,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
    aiohttp_server: Any,
) -> None:
    flaky = FakeUpstream()
    flaky.server = await aiohttp_server(flaky.app)
    donor, token = await user_with_token(pool, "donor")
    good = await add_key(pool, config, donor, fake_upstream.base_url, name="good", api_key="sk-good-000000000000")
    rejected = await add_key(pool, config, donor, fake_upstream.base_url, name="rej", api_key="sk-rejected-00000000")
    paused = await add_key(pool, config, donor, fake_upstream.base_url, name="paused", api_key="sk-paused-000000000")
    stopped = await add_key(pool, config, donor, fake_upstream.base_url, name="stopped", api_key="sk-stopped-00000000")
    shaky = await add_key(pool, config, donor, flaky.base_url, name="shaky", api_key="sk-shaky-0000000000")
    async with pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET is_active = false WHERE id = $1", uuid.UUID(paused.id))
        # An operator's stop, and a key the proxy disabled earlier; only the latter may come back.
        await sharedkeys.disable_key(conn, stopped.id, "disabled by an administrator")
        await sharedkeys.disable_key(conn, rejected.id, REJECTED, by=sharedkeys.DisabledBy.UPSTREAM)
    fake_upstream.valid_keys = {"sk-good-000000000000"}  # the rejected key is still refused
    flaky.fail_next(500, times=1000)
    job_env = {**env, "SHAREKEY_HEALTH_INTERVAL_SECONDS": "1", "SHAREKEY_BALANCER_COOLDOWN_SECONDS": "1"}
    gateways = [serve(job_env), serve(job_env)]
    for gw in gateways:
        await wait_ready(gw)
    started = datetime.now(UTC)

    async def status(key_id: str) -> tuple[str, str | None, bool]:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, status_reason, is_active FROM shared_keys WHERE id = $1", uuid.UUID(key_id)
            )
        return row["status"], row["status_reason"], row["is_active"]

    async def until(key_id: str, wanted: str, within: float = 8) -> float:
        deadline = time.monotonic() + within
        while (await status(key_id))[0] != wanted:  # noqa: ASYNC110 - polling another process' writes
            assert time.monotonic() < deadline, f"{key_id} is {await status(key_id)}, not {wanted}"
            await asyncio.sleep(0.05)
        return time.monotonic()

    await until(shaky.id, "cooling")
    assert (await status(shaky.id))[1] == "failed its health check: the upstream answered with an error (HTTP 500)"
    await asyncio.sleep(1.2)
    assert (await status(rejected.id))[0] == "disabled", "still refused: stays disabled"
    fake_upstream.valid_keys = None  # the upstream accepts the stored key again
    flaky.failures.clear()
    await until(rejected.id, "active")
    await until(shaky.id, "active")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for i in range(12):
            url = gateways[i % 2].url + "/v1/chat/completions"
            async with session.post(url, json={"model": "gpt-4o-mini"}) as resp:
                assert resp.status == 200
    await asyncio.sleep(max(0.0, 5.0 - (datetime.now(UTC) - started).total_seconds()))
    ended = datetime.now(UTC)
    codes = [await asyncio.to_thread(gw.stop) for gw in gateways]
    assert codes == [0, 0]

    assert await status(paused.id) == ("active", None, False), "a paused key is never touched"
    assert await status(stopped.id) == ("disabled", "disabled by an administrator", True)
    used = {r.headers.get("Authorization") for r in fake_upstream.requests}
    assert "Bearer sk-paused-000000000" not in used and "Bearer sk-stopped-00000000" not in used
    async with pool.acquire() as conn:
        rows = {
            str(r["id"]): r
            for r in await conn.fetch("SELECT id, last_checked_at, last_error FROM shared_keys WHERE is_active")
        }
    assert rows[good.id]["last_checked_at"] is not None
    assert rows[shaky.id]["last_error"] == "health check: the upstream answered with an error (HTTP 500)"
    assert rows[rejected.id]["last_error"] == f"health check: {REJECTED}"

    # Each job ran once per period across the two processes.
    runs = sorted((datetime.fromisoformat(e["timestamp"]), e["job"]) for gw in gateways for e in gw.events("job_ran"))
    health = [t for t, job in runs if job == "health"]
    during = [t for t in health if started <= t <= ended]
    seconds = (ended - started).total_seconds()
    assert seconds - 1.5 <= len(during) <= seconds + 1, (seconds, health)
    assert min(b - a for a, b in zip(health, health[1:], strict=False)) >= timedelta(seconds=0.9), health
    assert [job for _, job in runs].count("rollover") == 1, "a lease until midnight: once"
    assert [job for _, job in runs].count("retention") == 1


async def test_roll_over_resets_only_yesterdays_counts(
    pool: asyncpg.Pool, config: config_mod.Config, cli_env: dict[str, str]
) -> None:
    donor, _ = await user_with_token(pool, "donor")
    keys = [await add_key(pool, config, donor, "https://api.example.com/v1", name=f"k{i}") for i in range(3)]
    today = date(2026, 11, 24)
    async with pool.acquire() as conn:
        for key, (day, count) in zip(keys, [(today - timedelta(days=1), 7), (today, 5), (None, 0)], strict=True):
            await conn.execute(
                "UPDATE shared_keys SET usage_day = $2, usage_count_today = $3 WHERE id = $1",
                uuid.UUID(key.id),
                day,
                count,
            )
        assert await jobs.roll_over(conn, today) == 1
        assert await jobs.roll_over(conn, today) == 0, "idempotent"
        rows = await conn.fetch("SELECT usage_day, usage_count_today FROM shared_keys ORDER BY name")
    assert [(r["usage_day"], r["usage_count_today"]) for r in rows] == [(today, 0), (today, 5), (None, 0)]

    async with pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET usage_day = '2020-01-01', usage_count_today = 3")
    result = await asyncio.to_thread(sharekey, "reset-daily", env=cli_env)
    assert result.code == 0, result.err
    assert result.out.startswith("reset the daily count of 3 key(s); today is ")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT sum(usage_count_today) FROM shared_keys") == 0


async def test_retention_deletes_old_rows_in_batches(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    rows = [(f"old-{i}", now - timedelta(days=91, minutes=i)) for i in range(23)]
    rows += [(f"new-{i}", now - timedelta(days=89)) for i in range(5)]
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO key_usage_logs (request_id, status, created_at) VALUES ($1, 'ok', $2)", rows
        )
    assert await jobs.delete_old_usage(pool, 90, batch=5) == 23
    async with pool.acquire() as conn:
        left = await conn.fetch("SELECT request_id FROM key_usage_logs ORDER BY request_id")
    assert [r["request_id"] for r in left] == [f"new-{i}" for i in range(5)]


async def test_probe_reads_the_upstreams_answer(config: config_mod.Config, fake_upstream: FakeUpstream) -> None:
    pool = h1.create_pool(config)
    try:

        async def check(method: str) -> keytest.Probe:
            return await keytest.probe(pool, fake_upstream.base_url, "sk-any", "gpt-4o-mini", method=method, timeout=5)

        assert (await check("models")).result == "ok"
        assert (await check("completion")).result == "ok"
        assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/chat/completions"]
        fake_upstream.fail_next(Failure(status=429, retry_after="7"))
        assert await check("models") == keytest.Probe("rate_limited", 429, 7.0, "rate limited by the upstream")
        fake_upstream.fail_next(403)
        assert await check("completion") == keytest.Probe(
            "rejected", 403, None, "the upstream rejected the key (HTTP 403)"
        )
        fake_upstream.fail_next(502)
        assert (await check("models")).result == "failed"
        fake_upstream.fail_next(404)  # no model list: the 1-token completion decides
        assert (await check("models")).result == "ok" and fake_upstream.requests[-1].path == "/v1/chat/completions"
        gone = await keytest.probe(pool, "http://127.0.0.1:9/v1", "sk-any", "m", method="models", timeout=2)
        assert gone == keytest.Probe("failed", detail="could not reach the upstream")
        fake_upstream.fail_next(Failure(hang=2.0))
        started = time.monotonic()
        slow = await keytest.probe(pool, fake_upstream.base_url, "sk-any", "m", method="completion", timeout=0.3)
        assert slow == keytest.Probe("failed", detail="could not reach the upstream")
        assert time.monotonic() - started < 1.0
    finally:
        await pool.close()


async def test_completion_health_check_passes_for_reasoning_models(
    config: config_mod.Config, fake_upstream: FakeUpstream
) -> None:
    """A model that refuses max_tokens is asked again with max_completion_tokens, as the key test does."""
    fake_upstream.reject_max_tokens = True
    pool = h1.create_pool(config)
    try:
        found = await keytest.probe(
            pool, fake_upstream.base_url, "sk-any", "gpt-4o-mini", method="completion", timeout=5
        )
        assert found == keytest.Probe("ok", 200)
        bodies = [r.body for r in fake_upstream.calls("/v1/chat/completions")]
        assert [("max_tokens" in b, "max_completion_tokens" in b) for b in bodies] == [(True, False), (False, True)]
        fake_upstream.requests.clear()
        fake_upstream.fail_next(Failure(status=400, path="/v1/chat/completions"))  # any other 400: no retry
        found = await keytest.probe(
            pool, fake_upstream.base_url, "sk-any", "gpt-4o-mini", method="completion", timeout=5
        )
        assert (found.result, found.http_status) == ("failed", 400)
        assert len(fake_upstream.calls("/v1/chat/completions")) == 1
    finally:
        await pool.close()
