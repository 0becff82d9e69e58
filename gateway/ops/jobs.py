"""Jobs that run once per cluster, each under a Redis lease.

Every gateway process runs the same loop for every job; a lease decides which one runs it:
`SET <p>:v1:{<p>}:lease:<job> <token> NX PX <period>`. The process that sets it runs the job and
keeps the lease for the whole period, so however many processes there are, a job runs once per
period. Only the holder can change its lease (compare-and-set on its random token, in Lua): a
run that outlasts its period keeps extending it, a failed run shortens it to `RETRY_SECONDS`, a
run cut short by shutdown gives it back. The other processes sleep until the lease ends.

    health     (ops/keychecks.py) every health.interval_seconds (0: never; the first one interval after start):
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway import appkeys, metrics
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import redisnames
from gateway.ops import rotation
from gateway.ops.keychecks import HealthChecks, redis_now_ms
from gateway.relay.days import day_bounds

log = structlog.get_logger(__name__)

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
    lease = Lease(client, redisnames.job_lease(prefix, job.name))
    if await stopped(stop, job.first_delay):
        return
    while True:
        try:
            period = job.period_ms(await redis_now_ms(client))
            if await lease.take(period):
                await _run_holding(lease, job, period, stop)
            wait = await lease.left_ms() / 1000
        except REDIS_DOWN as e:
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
        with contextlib.suppress(*REDIS_DOWN):
            async with asyncio.timeout(1.0):
                await lease.release()
        return
    error = run.exception()
    if error is None:
        metrics.job_ran(job.name, ok=True)
        log.info("job_ran", job=job.name, seconds=round(time.monotonic() - started, 3))
        return
    metrics.job_ran(job.name, ok=False)
    expected = isinstance(error, POSTGRES_DOWN + REDIS_DOWN)
    if isinstance(error, POSTGRES_DOWN):
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
        except REDIS_DOWN:
            pass


async def announce_ring(client: aioredis.Redis, prefix: str, kids: list[str], stop: asyncio.Event) -> None:
    """For the life of the process: `<host>:<pid>` -> `<expires ms> <kid,kid,…>` (see `rotation`)."""
    member = f"{socket.gethostname()}:{os.getpid()}"
    key = redisnames.keyrings(prefix)
    while True:
        try:
            expires = await redis_now_ms(client) + rotation.RING_TTL_MS
            await client.hset(key, member, f"{expires} {','.join(kids)}")
        except REDIS_DOWN as e:
            log.debug("ring_announce_failed", error=str(e))
        if await stopped(stop, rotation.RING_EVERY):
            break
    with contextlib.suppress(*REDIS_DOWN):
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


# --- the cleanup context -------------------------------------------------------------------------


def cluster_job_list(app: web.Application) -> list[Job]:
    config = app[appkeys.config]
    pool, client = app[appkeys.pg], app[appkeys.redis]
    tz = ZoneInfo(config.balancer.timezone)
    jobs = []

    async def rollover() -> None:
        day = day_bounds(await redis_now_ms(client), tz)
        async with pool.acquire(timeout=5) as conn:
            reset = await roll_over(conn, date.fromisoformat(day.name))
        if reset:
            log.info("daily_rollover", day=day.name, keys=reset)

    # A lease until the next local midnight (by the same clock), at least a second.
    jobs.append(Job("rollover", lambda now: max(1000, day_bounds(now, tz).end_ms - now), rollover))
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
