"""Jobs that run once per cluster, each under a Redis lease.

Every gateway process runs the same loop for every job; a lease decides which one runs it:
`SET <p>:v1:{<p>}:lease:<job> <token> NX PX <period>`. The process that sets it runs the job and
keeps the lease for the whole period, so however many processes there are, a job runs once per
period. Only the holder can change its lease (compare-and-set on its random token, in Lua): a
run that outlasts its period keeps extending it, a failed run shortens it to `RETRY_SECONDS`, a
run cut short by shutdown gives it back. The other processes sleep until the lease ends.

    health     every health.interval_seconds (0: never; the first one interval after start):
               test every active key; cooling keys and keys disabled because the upstream
               rejected them are tested again with back-off and come back when they pass.
               A key paused by its owner or disabled by an operator is never touched.
    rollover   at midnight in balancer.timezone: reset yesterday's usage_count_today
    retention  hourly: delete usage rows older than usage.retention_days, in bounded batches

The context also announces this process' key ring, for `rotate-secret` (see `rotation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from aiohttp import web

from gateway import appkeys, metrics
from gateway.net import events, h1, upstream
from gateway.net.keytest import INVALID_KEY, one_token_completion
from gateway.ops import rotation
from gateway.relay.balancer import _day_bounds
from gateway.store.crypto import SealError

log = structlog.get_logger(__name__)

REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
RETRY_SECONDS = 60.0  # a failed run is tried again this soon (or after its period, if shorter)
KEEP_SECONDS = 15.0  # a running job's lease always has at least this long left
MAX_SLEEP = 60.0  # look at a lease at least this often (it may have vanished with Redis' data)
STOP_TIMEOUT = 3.0

# --- the lease -----------------------------------------------------------------------------------

LEASE_SCRIPT = """
-- KEYS[1] a job's lease; ARGV[1] the holder's token; ARGV[2] release | extend | expire; ARGV[3] ms.
-- Returns 1 when the holder changed its lease, 0 when the lease is not (or no longer) its own.
-- extend: make at least ARGV[3] ms remain; expire: make exactly ARGV[3] ms remain.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then return redis.call('DEL', KEYS[1]) end
if ARGV[2] == 'extend' and redis.call('PTTL', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
return redis.call('PEXPIRE', KEYS[1], ARGV[3])
"""


def lease_key(prefix: str, job: str) -> str:
    return f"{prefix}:v1:{{{prefix}}}:lease:{job}"


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    period_ms: Callable[[int], int]  # Redis' now (epoch ms) -> how long this turn's lease lasts
    run: Callable[[], Awaitable[Any]]
    first_delay: float = 0.0  # seconds this process waits before its first try


class Lease:
    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self._redis, self.key = client, key
        self._script = client.register_script(LEASE_SCRIPT)
        self._token = ""

    async def take(self, ms: int) -> bool:
        self._token = os.urandom(16).hex()
        return bool(await self._redis.set(self.key, self._token, nx=True, px=max(1, ms)))

    async def _change(self, op: str, ms: int = 0) -> bool:
        return bool(await self._script(keys=[self.key], args=[self._token, op, max(1, ms)]))

    async def release(self) -> bool:
        return await self._change("release")

    async def extend(self, ms: int) -> bool:
        return await self._change("extend", ms)

    async def expire(self, ms: int) -> bool:
        return await self._change("expire", ms)

    async def left_ms(self) -> int:
        return int(await self._redis.pttl(self.key))


async def redis_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True as soon as `stop` is set.

    Loops end through `stop`, between calls, rather than by cancellation: redis-py can swallow a
    cancellation that lands while it connects (the call then simply completes, and a loop would go
    on) and leave that connection behind."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def run_job(client: aioredis.Redis, prefix: str, job: Job, stop: asyncio.Event) -> None:
    """This process' loop for one job: take the lease when it is free, run, sleep until it ends."""
    lease = Lease(client, lease_key(prefix, job.name))
    if await stopped(stop, job.first_delay):
        return
    while True:
        try:
            period = job.period_ms(await redis_now_ms(client))
            if await lease.take(period):
                await _run_holding(lease, job, period, stop)
            wait = await lease.left_ms() / 1000
        except REDIS_ERRORS as e:
            metrics.redis_error("jobs")
            log.warning("job_lease_unavailable", job=job.name, error=str(e))
            wait = 1.0
        if await stopped(stop, min(MAX_SLEEP, max(0.05, wait)) + random.uniform(0, 0.05)):
            return


async def _run_holding(lease: Lease, job: Job, period_ms: int, stop: asyncio.Event) -> None:
    started = time.monotonic()
    finished = asyncio.Event()
    run = asyncio.create_task(job.run())
    halt = asyncio.create_task(stop.wait())
    keeper = asyncio.create_task(_keep(lease, job.name, finished))
    try:
        await asyncio.wait((run, halt), return_when=asyncio.FIRST_COMPLETED)
    finally:
        halt.cancel()
        finished.set()
        if not run.done():  # shutting down mid-run
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        await asyncio.wait((keeper,), timeout=STOP_TIMEOUT)
    if run.cancelled():  # give the lease back: another process takes over at once
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(1.0):
                await lease.release()
        return
    error = run.exception()
    if error is None:
        metrics.job_ran(job.name, ok=True)
        log.info("job_ran", job=job.name, seconds=round(time.monotonic() - started, 3))
        return
    metrics.job_ran(job.name, ok=False)
    expected = isinstance(error, PG_ERRORS + REDIS_ERRORS)
    if isinstance(error, PG_ERRORS):
        metrics.postgres_error("jobs")
    reason = str(error) or type(error).__name__
    log.warning("job_failed", job=job.name, error=reason, exc_info=None if expected else error)
    await lease.expire(min(period_ms, round(RETRY_SECONDS * 1000)))  # try again sooner than a period


async def _keep(lease: Lease, name: str, finished: asyncio.Event) -> None:
    """Extend the lease while its job runs (not cancelled: see `stopped`)."""
    while not await stopped(finished, KEEP_SECONDS / 3):
        try:
            if not await lease.extend(round(KEEP_SECONDS * 1000)):
                log.warning("job_lease_lost", job=name)
                return
        except REDIS_ERRORS:
            pass


async def announce_ring(client: aioredis.Redis, prefix: str, kids: list[str], stop: asyncio.Event) -> None:
    """For the life of the process: `<host>:<pid>` -> `<expires ms> <kid,kid,…>` (see `rotation`)."""
    member = f"{socket.gethostname()}:{os.getpid()}"
    key = rotation.rings_key(prefix)
    while True:
        try:
            expires = await redis_now_ms(client) + rotation.RING_TTL_MS
            await client.hset(key, member, f"{expires} {','.join(kids)}")
        except REDIS_ERRORS as e:
            log.debug("ring_announce_failed", error=str(e))
        if await stopped(stop, rotation.RING_EVERY):
            break
    with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
        async with asyncio.timeout(1.0):
            await client.hdel(key, member)


# --- daily roll-over -----------------------------------------------------------------------------

ROLL_OVER = "UPDATE shared_keys SET usage_count_today = 0, usage_day = $1 WHERE usage_day < $1"


async def roll_over(conn: asyncpg.Connection, today: date) -> int:
    """Reset the daily count of keys last counted before `today`; returns how many. Idempotent.

    The flusher starts a new day's count by itself; this resets keys with no call yet today, so
    the stored column is right for anyone reading it. Redis' counters are per day already."""
    return int((await conn.execute(ROLL_OVER, today)).split()[-1])


# --- retention -----------------------------------------------------------------------------------

RETENTION_EVERY_MS = 3_600_000
RETENTION_BATCH = 5000
RETENTION_PAUSE = 0.05

# One short statement per batch, oldest first along idx_usage_logs_created. Old rows are never
# the ones the flusher inserts or conflicts on, so the two do not wait for each other.
DELETE_OLD_USAGE = """
DELETE FROM key_usage_logs WHERE id = ANY(ARRAY(
    SELECT id FROM key_usage_logs
    WHERE created_at < now() - make_interval(days => $1)
    ORDER BY created_at LIMIT $2
))
"""


async def delete_old_usage(pool: asyncpg.Pool, days: int, *, batch: int = RETENTION_BATCH) -> int:
    total = 0
    while True:
        async with pool.acquire(timeout=5) as conn:
            deleted = int((await conn.execute(DELETE_OLD_USAGE, days, batch)).split()[-1])
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(RETENTION_PAUSE)  # let the flusher and everyone else in


# --- key health checks ---------------------------------------------------------------------------

HEALTH_CONCURRENCY = 8
MAX_BACKOFF_SECONDS = 6 * 3600.0
DISABLED_FOR = 10 * 365 * 86400.0  # like the proxy: a rejected key cools "for years"
FAILED_CHECK = "failed its health check"

# Paused keys (is_active = false) are never read; disabled ones only if the upstream rejected them.
SELECT_CHECKED = """
SELECT id::text, user_id::text, base_url, api_key_encrypted, available_models, status, status_reason
FROM shared_keys
WHERE is_active AND (status <> 'disabled' OR starts_with(coalesce(status_reason, ''), $1))
"""

# Compare-and-set on the state the check started from: an owner's pause or an operator's
# disable in the meantime wins.
SET_CHECKED = """
UPDATE shared_keys
SET status = $2, status_reason = $3, last_error = coalesce($4, last_error),
    last_error_at = CASE WHEN $4::text IS NULL THEN last_error_at ELSE now() END,
    last_checked_at = now(), updated_at = CASE WHEN status = $2 THEN updated_at ELSE now() END
WHERE id = $1 AND is_active AND status = $5 AND status_reason IS NOT DISTINCT FROM $6
"""


@dataclass(frozen=True, slots=True)
class Probe:
    result: str  # ok | rejected | rate_limited | failed
    http_status: int | None = None
    retry_after: float | None = None
    detail: str = ""


async def probe(
    pool: h1.Pool,
    base_url: str,
    api_key: str,
    model: str,
    *,
    method: str,
    timeout: float,  # noqa: ASYNC109 - the whole probe's budget
) -> Probe:
    """One cheap live request: `GET /models`, or a 1-token completion (also when there is no model
    list), asked like the key test asks it (`keytest.one_token_completion`)."""
    base = base_url.rstrip("/")
    try:
        async with asyncio.timeout(timeout):
            if method == "models":
                async with upstream.request(pool, "GET", f"{base}/models", api_key=api_key) as resp:
                    found = _judge(resp.status, resp.headers.get("Retry-After", ""))
                if found.http_status not in (404, 405, 501):
                    return found
            async with one_token_completion(pool, base, api_key, model) as resp:
                return _judge(resp.status, resp.headers.get("Retry-After", ""))
    except upstream.UpstreamError as e:
        return Probe("failed", detail=e.message)
    except TimeoutError:
        return Probe("failed", detail=upstream.UNREACHABLE)


def _judge(status: int, retry_after: str) -> Probe:
    if 200 <= status < 300:
        return Probe("ok", status)
    if status in (401, 403):
        return Probe("rejected", status, detail=f"{INVALID_KEY} (HTTP {status})")
    if status == 429:
        seconds = float(retry_after) if retry_after.isdigit() and 0 < int(retry_after) <= 86400 else None
        return Probe("rate_limited", status, seconds, "rate limited by the upstream")
    return Probe("failed", status, detail=f"the upstream answered with an error (HTTP {status})")


class HealthChecks:
    """One run tests every key that is due; the back-off of failing keys is kept in Redis."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        config = app[appkeys.config]
        self._config = config
        self._prefix = config.redis.key_prefix
        self.backoff_key = f"{self._prefix}:v1:{{{self._prefix}}}:health"

    async def run(self) -> dict[str, int]:
        app = self._app
        client, balancer = app[appkeys.redis], app[appkeys.balancer]
        async with app[appkeys.pg].acquire(timeout=5) as conn:
            rows = await conn.fetch(SELECT_CHECKED, INVALID_KEY)
        now_ms = await redis_now_ms(client)
        cooling = await balancer.cooling()
        backoff = {k.decode(): v.decode() for k, v in (await client.hgetall(self.backoff_key)).items()}
        gone = set(backoff) - {r["id"] for r in rows}
        if gone:
            await client.hdel(self.backoff_key, *gone)
        due = [r for r in rows if self._due(r, cooling, backoff, now_ms)]
        limit = asyncio.Semaphore(HEALTH_CONCURRENCY)

        async def one(row: asyncpg.Record) -> str:
            async with limit:
                return await self._check(row, int(backoff.get(row["id"], "0:0").partition(":")[0]), now_ms)

        results = await asyncio.gather(*(one(r) for r in due))
        counts = {r: results.count(r) for r in set(results)}
        log.info("keys_checked", keys=len(rows), checked=len(due), **counts)
        return counts

    def _due(self, row: asyncpg.Record, cooling: dict[str, float], backoff: dict[str, str], now_ms: int) -> bool:
        if row["status"] != "disabled" and cooling.get(row["id"], 0) > 0:
            return False  # its cooldown still runs (a 429's Retry-After is the upstream's to give)
        return int(backoff.get(row["id"], "0:0").partition(":")[2]) <= now_ms

    async def _check(self, row: asyncpg.Record, fails: int, now_ms: int) -> str:
        app, key_id = self._app, row["id"]
        try:
            api_key = app[appkeys.keyring].open(
                row["api_key_encrypted"], key_id=key_id, owner_id=row["user_id"], base_url=row["base_url"]
            )
        except SealError as e:
            log.error("key_unsealable", key_id=key_id, reason=str(e))
            metrics.health_checked("unsealable")
            return "unsealable"
        found = await probe(
            app[appkeys.upstream_pool],
            row["base_url"],
            api_key,
            (row["available_models"] or [""])[0],
            method=self._config.health.method,
            timeout=self._config.upstream.test_timeout,
        )
        metrics.health_checked(found.result)
        try:
            await self._apply(row, found, fails, now_ms)
        except (*REDIS_ERRORS, *PG_ERRORS) as e:
            log.warning("key_check_not_recorded", key_id=key_id, error=str(e))
        return found.result

    async def _apply(self, row: asyncpg.Record, found: Probe, fails: int, now_ms: int) -> None:
        app, key_id = self._app, row["id"]
        client, balancer = app[appkeys.redis], app[appkeys.balancer]
        was, reason = row["status"], row["status_reason"]
        if found.result == "ok":
            new, new_reason, error = "active", None, None
        elif found.result == "rejected":
            new, new_reason, error = "disabled", found.detail, f"health check: {found.detail}"
        elif was == "disabled":  # rejected before; a 429 or 5xx now does not prove the key works
            new, new_reason, error = was, reason, f"health check: {found.detail}"
        else:
            new, new_reason, error = "cooling", f"{FAILED_CHECK}: {found.detail}", f"health check: {found.detail}"
        async with app[appkeys.pg].acquire(timeout=5) as conn:
            changed = await conn.execute(SET_CHECKED, uuid.UUID(key_id), new, new_reason, error, was, reason)
        if changed == "UPDATE 0":
            return  # paused, disabled by someone or deleted meanwhile: theirs to decide
        if found.result == "ok":
            if was != "active" or fails:
                await balancer.clear(key_id)
                await client.hdel(self.backoff_key, key_id)
                log.info("key_recovered", key_id=key_id, was=was)
        else:
            interval = self._config.health.interval_seconds
            delay = min(MAX_BACKOFF_SECONDS, interval * 2**fails)
            await client.hset(self.backoff_key, key_id, f"{fails + 1}:{now_ms + round(delay * 1000)}")
            if found.result == "rejected":
                await balancer.cool_down(key_id, DISABLED_FOR)
            elif new == "cooling":
                await balancer.cool_down(key_id, found.retry_after or self._config.balancer.cooldown_seconds)
            if new != was:
                log.warning("key_check_failed", key_id=key_id, result=found.result, status=new, detail=found.detail)
        if new != was:
            await events.publish(client, self._prefix, "keys", key_id)


# --- the cleanup context -------------------------------------------------------------------------


def cluster_job_list(app: web.Application) -> list[Job]:
    config = app[appkeys.config]
    pool, client = app[appkeys.pg], app[appkeys.redis]
    tz = ZoneInfo(config.balancer.timezone)
    jobs = []

    async def rollover() -> None:
        day = _day_bounds(await redis_now_ms(client), tz)
        async with pool.acquire(timeout=5) as conn:
            reset = await roll_over(conn, date.fromisoformat(day.name))
        if reset:
            log.info("daily_rollover", day=day.name, keys=reset)

    # A lease until the next local midnight (by the same clock), at least a second.
    jobs.append(Job("rollover", lambda now: max(1000, _day_bounds(now, tz).end_ms - now), rollover))
    days = config.usage.retention_days
    if days:

        async def retention() -> None:
            deleted = await delete_old_usage(pool, days)
            if deleted:
                log.info("usage_rows_deleted", rows=deleted, older_than_days=days)

        jobs.append(Job("retention", lambda _: RETENTION_EVERY_MS, retention))
    interval = config.health.interval_seconds
    if interval:
        checks = HealthChecks(app)
        jobs.append(Job("health", lambda _: interval * 1000, checks.run, first_delay=interval))
    return jobs


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: this process' share of the cluster's jobs, and its key ring announced.

    On exit the loops are told to stop and get `STOP_TIMEOUT` to finish the Redis call they may
    be in (a job run in progress is cancelled at once); only then are stragglers cancelled."""
    config = app[appkeys.config]
    client, prefix = app[appkeys.redis], config.redis.key_prefix
    stop = asyncio.Event()
    loops = [run_job(client, prefix, job, stop) for job in cluster_job_list(app)]
    loops.append(announce_ring(client, prefix, rotation.ring_ids(config), stop))
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
