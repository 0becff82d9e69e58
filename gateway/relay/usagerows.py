"""The usage log's rows (`UsageRecord`, `UsageStatus`) and the one statement per day that writes
a batch of them with every rollup they feed (`write`): the key's aggregates and spend today, the
donor's day (`donor_usage_daily`), the key's (`key_usage_daily`) and the caller's token's
(`token_usage_daily`). The queue and the flusher around it are `usage`'s.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

import asyncpg

from gateway.relay.prices import Prices, cost


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
    token_id: str | None = None  # the caller's gateway token

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
        d.setdefault("token_id", None)
        return cls(**d)


# Deleted keys or users must not fail the whole batch on a foreign key: those ids become NULL.
WRITE_BATCH = """
WITH rows AS (
    SELECT r.*
    FROM unnest($1::text[], $2::int[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::int[],
                $9::int[], $10::int[], $11::bool[], $12::bool[], $13::bool[], $14::text[], $15::int[], $16::int[],
                $17::int[], $18::text[], $19::timestamptz[], $21::int[], $22::int[], $23::float8[], $24::text[],
                $25::uuid[])
      AS r(request_id, attempt, shared_key_id, user_id, donor_id, api_endpoint, model_used, prompt_tokens,
           completion_tokens, tokens_used, usage_estimated, success, committed, status, http_status, latency_ms,
           ttft_ms, error_message, created_at, cache_read_tokens, cache_creation_tokens, cost_estimate,
           server_tool_calls, token_id)
), ins AS (
    INSERT INTO key_usage_logs (request_id, attempt, shared_key_id, user_id, donor_id, api_endpoint, model_used,
                                prompt_tokens, completion_tokens, tokens_used, usage_estimated, success, committed,
                                status, http_status, latency_ms, ttft_ms, error_message, created_at,
                                cache_read_tokens, cache_creation_tokens, cost_estimate, server_tool_calls,
                                token_id)
    SELECT r.request_id, r.attempt, k.id, u.id, d.id, r.api_endpoint, r.model_used, r.prompt_tokens,
           r.completion_tokens, r.tokens_used, r.usage_estimated, r.success, r.committed, r.status, r.http_status,
           r.latency_ms, r.ttft_ms, r.error_message, r.created_at, r.cache_read_tokens, r.cache_creation_tokens,
           r.cost_estimate::numeric, r.server_tool_calls::jsonb, t.id
    FROM rows r
    LEFT JOIN shared_keys k ON k.id = r.shared_key_id
    LEFT JOIN users u ON u.id = r.user_id
    LEFT JOIN users d ON d.id = r.donor_id
    LEFT JOIN api_tokens t ON t.id = r.token_id
    ON CONFLICT (request_id, attempt) DO NOTHING
    RETURNING shared_key_id, donor_id, committed, tokens_used, created_at, cost_estimate, token_id
), token_days AS (
    -- The balance endpoints' rollup (sql/0017): each token's committed rows inserted just now.
    INSERT INTO token_usage_daily AS td (token_id, day, calls, tokens, value_usd)
    SELECT i.token_id, $20, count(*), coalesce(sum(i.tokens_used), 0), coalesce(sum(i.cost_estimate), 0)
    FROM ins i
    WHERE i.committed AND i.token_id IS NOT NULL
    GROUP BY i.token_id
    ORDER BY i.token_id  -- one lock order for concurrent flushers
    ON CONFLICT (token_id, day) DO UPDATE SET
        calls = td.calls + excluded.calls,
        tokens = td.tokens + excluded.tokens,
        value_usd = td.value_usd + excluded.value_usd
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
                [r.token_id for r in rs],
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
