"""Usage accounting off the hot path: an in-process queue and a batch flusher.

A request appends a `UsageRecord` and never waits. The flusher writes batches to
`key_usage_logs` and, in the same statement, adds the committed calls and tokens to the key's
aggregates (`usage_count_today`, `total_usage_count`, `total_tokens`, `last_used_at`) and to the
donor's day in `donor_usage_daily` (the thanks board's rollup) and the key's in `key_usage_daily`
(the /keys page's). Each row's `cost_estimate` (USD)
comes from its tokens and `relay.prices`; rows whose tokens were estimated say so in
`usage_estimated`, and the cost adds to the donor's day as `value_usd` and to the key's spend
today (`spend_today_usd`); a key that reaches its `daily_budget_usd` is announced (`keys <id>`),
and the key index leaves it out until tomorrow. Rows are
unique by (request_id, attempt) and aggregates only count rows actually inserted, so writing a
batch twice (a retry after a lost answer, two processes draining the spool) changes nothing.

When PostgreSQL is down the records wait: in memory up to `MAX_BUFFER`, beyond that (and at
shutdown) in a Redis list, the spool, which any process drains once PostgreSQL answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import date

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway import metrics
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisnames
from gateway.relay.prices import Prices
from gateway.relay.usagerows import UsageRecord, UsageStatus, write

__all__ = ["USAGE", "UsageLog", "UsageRecord", "UsageStatus", "write"]

log = structlog.get_logger(__name__)

BATCH = 1000
INTERVAL = 0.25
MAX_BUFFER = 50_000
MAX_BACKOFF = 30.0
DRAIN_TIMEOUT = 10.0


SELECT_COUNTS_TODAY = (
    "SELECT id::text, usage_count_today FROM shared_keys WHERE usage_day = $1 AND usage_count_today > 0"
)


class UsageLog:
    def __init__(self, pool: asyncpg.Pool, client: aioredis.Redis, prefix: str, prices: Prices | None = None) -> None:
        self._pool = pool
        self.prices = prices
        self._redis = client
        self._prefix = prefix
        self.spool_key = redisnames.usage_spool(prefix)
        self._buffer: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._backoff = 0.0

    def add(self, record: UsageRecord) -> None:
        """Called on the hot path: never blocks, never fails."""
        self._buffer.append(record)
        if len(self._buffer) >= BATCH:
            self._wake.set()

    async def counts_today(self, day: str) -> dict[str, int]:
        """Committed calls per key on `day` as PostgreSQL has them (`usage_count_today`), plus this
        process' records not written yet: what the balancer seeds a day's counts from. PostgreSQL
        down: this process' records alone (the day is then counted from Redis as before)."""
        counts: dict[str, int] = {}
        try:
            async with self._pool.acquire(timeout=2) as conn:
                rows = await conn.fetch(SELECT_COUNTS_TODAY, date.fromisoformat(day), timeout=5)
            counts = {r[0]: int(r[1]) for r in rows}
        except POSTGRES_DOWN as e:
            log.warning("usage_counts_unavailable", day=day, error=str(e))
        for r in self._buffer:
            if r.committed and r.shared_key_id and r.day.isoformat() == day:
                counts[r.shared_key_id] = counts.get(r.shared_key_id, 0) + 1
        return counts

    @property
    def depth(self) -> int:
        return len(self._buffer)

    @property
    def lag(self) -> float:
        """Seconds since the oldest record still in memory was made; 0 when none waits."""
        return max(0.0, time.time() - self._buffer[0].created_at.timestamp()) if self._buffer else 0.0

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(INTERVAL, self._backoff))
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush_once()
            metrics.usage_observed(self.depth, self.lag)

    async def flush_once(self) -> bool:
        """Write what is buffered, then drain the spool; False when PostgreSQL did not take it.

        Serialised, so a flush that returns True has seen every earlier record written. A flush
        cancelled mid-write puts its batch back: writing it again changes nothing.
        """
        async with self._lock:
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]
                try:
                    written = await self._write(batch)
                except BaseException:
                    self._buffer.extendleft(reversed(batch))
                    raise
                if not written:
                    self._buffer.extendleft(reversed(batch))
                    if len(self._buffer) > MAX_BUFFER:
                        await self._spool(MAX_BUFFER // 2)
                    return False
            return await self._drain_spool()

    async def _write(self, batch: list[UsageRecord]) -> bool:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                spent = await write(conn, batch, self.prices)
        except POSTGRES_DOWN as e:
            metrics.postgres_error("usage")
            self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
            log.warning("usage_write_failed", records=len(batch), error=str(e), retry_in=self._backoff)
            return False
        self._backoff = 0.0
        await self._announce_spent(spent)
        return True

    async def _announce_spent(self, key_ids: set[str]) -> None:
        """Keys at their daily budget: every process reloads them, and its key index leaves them
        out until tomorrow (`keyindex.load`). A lost event is caught by the index's periodic reload."""
        for key_id in sorted(key_ids):
            try:
                await events.publish(self._redis, self._prefix, "keys", key_id)
            except REDIS_DOWN as e:
                log.warning("budget_event_failed", key_id=key_id, error=str(e))
                return
        if key_ids:
            log.info("keys_at_budget", keys=len(key_ids))

    async def _spool(self, count: int) -> None:
        """Move the oldest `count` records to Redis, to bound memory while PostgreSQL is away."""
        moved = [self._buffer.popleft() for _ in range(min(count, len(self._buffer)))]
        try:
            await self._redis.rpush(self.spool_key, *[r.to_json() for r in moved])
            log.warning("usage_spooled", records=len(moved))
        except REDIS_DOWN as e:
            self._buffer.extendleft(reversed(moved))
            log.error("usage_spool_failed", records=len(moved), error=str(e))

    async def _drain_spool(self) -> bool:
        while True:
            try:
                raw = await self._redis.lrange(self.spool_key, 0, BATCH - 1)
            except REDIS_DOWN:
                return True  # nothing we can read now; the buffer itself is written
            if not raw:
                return True
            if not await self._write([UsageRecord.from_json(x) for x in raw]):
                return False
            try:
                await self._redis.ltrim(self.spool_key, len(raw), -1)
            except REDIS_DOWN:
                return True  # written; a second write of the same records changes nothing

    async def drain(self) -> None:
        """At shutdown: write everything; what PostgreSQL does not take goes to the spool."""
        try:
            await asyncio.wait_for(self._final_flush(), DRAIN_TIMEOUT)
        except TimeoutError:
            pass
        if self._buffer:
            await self._spool(len(self._buffer))
        if self._buffer:
            log.error("usage_records_lost", records=len(self._buffer))

    async def _final_flush(self) -> None:
        while self._buffer:
            if not await self.flush_once():
                return


USAGE: web.AppKey[UsageLog] = web.AppKey("usage", UsageLog)
