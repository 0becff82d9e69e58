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
import dataclasses
import json
import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway import metrics
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisnames
from gateway.relay.prices import Prices, cost

log = structlog.get_logger(__name__)

BATCH = 1000
INTERVAL = 0.25
MAX_BUFFER = 50_000
MAX_BACKOFF = 30.0
DRAIN_TIMEOUT = 10.0


class UsageStatus(StrEnum):
    """How an attempt ended (`key_usage_logs.status`)."""

    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"  # failed before its commit point
    TIMEOUT = "timeout"  # the same, by a deadline
    CLIENT_ERROR = "client_error"  # the upstream refused the request itself (400, 404, 413, 422)
    CANCELLED = "cancelled"  # the client went away
    STREAM_ERROR = "stream_error"  # a committed stream broke off


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    attempt: int
    day: date  # the balancer's day (Redis time, configured zone): the day this call counts on
    created_at: datetime
    shared_key_id: str | None
    user_id: str | None
    donor_id: str | None
    api_endpoint: str
    model: str
    status: UsageStatus
    success: bool
    committed: bool  # reached the client: counts against the key and in its usage
    http_status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    latency_ms: int | None = None
    ttft_ms: int | None = None
    error_message: str | None = None
    cache_read_tokens: int | None = None  # of prompt_tokens: read from the upstream's prompt cache
    cache_creation_tokens: int | None = None  # of prompt_tokens: written to it
    upstream_model: str | None = None  # the name the upstream was asked for (prices match on it)
    server_tool_calls: dict[str, int] | None = None  # allowed paid features that ran, by feature

    @property
    def tokens_used(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["day"] = self.day.isoformat()
        d["created_at"] = self.created_at.isoformat()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str | bytes) -> UsageRecord:
        d = json.loads(text)
        d["day"] = date.fromisoformat(d["day"])
        d["created_at"] = datetime.fromisoformat(d["created_at"])
        d["status"] = UsageStatus(d["status"])
        d.setdefault("upstream_model", None)  # spooled before it existed
        d.setdefault("server_tool_calls", None)
        return cls(**d)


# Deleted keys or users must not fail the whole batch on a foreign key: those ids become NULL.
WRITE_BATCH = """
WITH rows AS (
    SELECT r.*
    FROM unnest($1::text[], $2::int[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::int[],
                $9::int[], $10::int[], $11::bool[], $12::bool[], $13::bool[], $14::text[], $15::int[], $16::int[],
                $17::int[], $18::text[], $19::timestamptz[], $21::int[], $22::int[], $23::float8[], $24::text[])
      AS r(request_id, attempt, shared_key_id, user_id, donor_id, api_endpoint, model_used, prompt_tokens,
           completion_tokens, tokens_used, usage_estimated, success, committed, status, http_status, latency_ms,
           ttft_ms, error_message, created_at, cache_read_tokens, cache_creation_tokens, cost_estimate,
           server_tool_calls)
), ins AS (
    INSERT INTO key_usage_logs (request_id, attempt, shared_key_id, user_id, donor_id, api_endpoint, model_used,
                                prompt_tokens, completion_tokens, tokens_used, usage_estimated, success, committed,
                                status, http_status, latency_ms, ttft_ms, error_message, created_at,
                                cache_read_tokens, cache_creation_tokens, cost_estimate, server_tool_calls)
    SELECT r.request_id, r.attempt, k.id, u.id, d.id, r.api_endpoint, r.model_used, r.prompt_tokens,
           r.completion_tokens, r.tokens_used, r.usage_estimated, r.success, r.committed, r.status, r.http_status,
           r.latency_ms, r.ttft_ms, r.error_message, r.created_at, r.cache_read_tokens, r.cache_creation_tokens,
           r.cost_estimate::numeric, r.server_tool_calls::jsonb
    FROM rows r
    LEFT JOIN shared_keys k ON k.id = r.shared_key_id
    LEFT JOIN users u ON u.id = r.user_id
    LEFT JOIN users d ON d.id = r.donor_id
    ON CONFLICT (request_id, attempt) DO NOTHING
    RETURNING shared_key_id, donor_id, committed, tokens_used, created_at, cost_estimate
), credit AS (
    -- The thanks board's rollup (sql/0002): only rows inserted just now, never a private key's.
    INSERT INTO donor_usage_daily AS d (donor_id, day, calls, tokens, last_served_at, value_usd)
    SELECT i.donor_id, $20, count(*), coalesce(sum(i.tokens_used), 0), max(i.created_at),
           coalesce(sum(i.cost_estimate), 0)
    FROM ins i LEFT JOIN shared_keys k ON k.id = i.shared_key_id
    WHERE i.committed AND i.donor_id IS NOT NULL AND k.is_private IS NOT TRUE
    GROUP BY i.donor_id
    ORDER BY i.donor_id  -- one lock order for concurrent flushers
    ON CONFLICT (donor_id, day) DO UPDATE SET
        calls = d.calls + excluded.calls,
        tokens = d.tokens + excluded.tokens,
        last_served_at = GREATEST(d.last_served_at, excluded.last_served_at),
        value_usd = d.value_usd + excluded.value_usd
), key_days AS (
    -- The /keys page's rollup (sql/0010): each key's committed rows inserted just now.
    INSERT INTO key_usage_daily AS kd (shared_key_id, day, calls, value_usd)
    SELECT i.shared_key_id, $20, count(*), coalesce(sum(i.cost_estimate), 0)
    FROM ins i
    WHERE i.committed AND i.shared_key_id IS NOT NULL
    GROUP BY i.shared_key_id
    ORDER BY i.shared_key_id  -- one lock order for concurrent flushers
    ON CONFLICT (shared_key_id, day) DO UPDATE SET
        calls = kd.calls + excluded.calls,
        value_usd = kd.value_usd + excluded.value_usd
), agg AS (
    SELECT shared_key_id,
           count(*) FILTER (WHERE committed) AS calls,
           coalesce(sum(tokens_used) FILTER (WHERE committed), 0) AS tokens,
           max(created_at) FILTER (WHERE committed) AS last,
           coalesce(sum(cost_estimate) FILTER (WHERE committed), 0) AS cost
    FROM ins WHERE shared_key_id IS NOT NULL
    GROUP BY shared_key_id
)
UPDATE shared_keys k SET
    usage_count_today = CASE
        WHEN k.usage_day IS NULL OR k.usage_day < $20 THEN agg.calls
        WHEN k.usage_day = $20 THEN k.usage_count_today + agg.calls
        ELSE k.usage_count_today END,
    usage_day = GREATEST(k.usage_day, $20),
    spend_today_usd = CASE
        WHEN k.spend_day IS NULL OR k.spend_day < $20 THEN agg.cost
        WHEN k.spend_day = $20 THEN k.spend_today_usd + agg.cost
        ELSE k.spend_today_usd END,
    spend_day = GREATEST(k.spend_day, $20),
    total_usage_count = k.total_usage_count + agg.calls,
    total_tokens = k.total_tokens + agg.tokens,
    last_used_at = GREATEST(k.last_used_at, agg.last)
FROM agg WHERE k.id = agg.shared_key_id AND agg.calls > 0
RETURNING k.id::text, k.daily_budget_usd IS NOT NULL AND k.spend_day = $20
                      AND k.spend_today_usd >= k.daily_budget_usd AS spent
"""


async def write(conn: asyncpg.Connection, records: list[UsageRecord], prices: Prices | None = None) -> set[str]:
    """Write records, one statement per day (aggregates add to the day they count on); the ids of
    the keys this batch credited whose spend on that day has reached their `daily_budget_usd`.

    Each row's cost is its tokens at the price in force now, a flush after it was served
    (`relay.prices`; one dictionary lookup per row once a model's price is memoised).

    Ids go as text: asyncpg encodes a UUID from its string form in C, where building uuid.UUID
    objects first cost ~2.4 ms per 1,000 records, all of it holding up the event loop."""
    by_day: dict[date, list[UsageRecord]] = {}
    for r in records:
        by_day.setdefault(r.day, []).append(r)
    spent: set[str] = set()
    async with conn.transaction():
        for day, rs in sorted(by_day.items()):
            rows = await conn.fetch(
                WRITE_BATCH,
                [r.request_id for r in rs],
                [r.attempt for r in rs],
                [r.shared_key_id for r in rs],
                [r.user_id for r in rs],
                [r.donor_id for r in rs],
                [r.api_endpoint for r in rs],
                [r.model for r in rs],
                [r.prompt_tokens for r in rs],
                [r.completion_tokens for r in rs],
                [r.tokens_used for r in rs],
                [r.usage_estimated for r in rs],
                [r.success for r in rs],
                [r.committed for r in rs],
                [r.status for r in rs],
                [r.http_status for r in rs],
                [r.latency_ms for r in rs],
                [r.ttft_ms for r in rs],
                [r.error_message for r in rs],
                [r.created_at for r in rs],
                day,
                [r.cache_read_tokens for r in rs],
                [r.cache_creation_tokens for r in rs],
                [_cost(prices, r) for r in rs],
                [json.dumps(r.server_tool_calls) if r.server_tool_calls else None for r in rs],
            )
            spent.update(r["id"] for r in rows if r["spent"])
    return spent


def _cost(prices: Prices | None, r: UsageRecord) -> float | None:
    if prices is None or (r.prompt_tokens is None and r.completion_tokens is None):
        return None
    return cost(
        prices.get(r.upstream_model or r.model),
        r.prompt_tokens,
        r.completion_tokens,
        r.cache_read_tokens,
        r.cache_creation_tokens,
        r.server_tool_calls,
    )


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
