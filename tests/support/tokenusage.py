"""A token's committed calls written through the real usage flusher (`usagerows.write`), so the
`token_usage_daily` rollup the balance endpoints and /tokens read is the one production fills."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import asyncpg

from gateway.relay import usage
from gateway.relay.prices import Price, Prices
from gateway.relay.usage import UsageRecord

MODEL = "gpt-4o-mini"
PRICE = Price(1.0, 2.0, source="config")  # USD per million: 1 in, 2 out


def call(
    token_id: str | None,
    user_id: str | None,
    day: date,
    prompt: int,
    completion: int,
    *,
    committed: bool = True,
    key_id: str | None = None,
    model: str = MODEL,
    request_id: str | None = None,
) -> UsageRecord:
    """One call's usage row as the relay records it (a key's donor: the caller, in these tests)."""
    return UsageRecord(
        request_id=request_id or f"req-{uuid.uuid4()}",
        attempt=1,
        day=day,
        created_at=datetime.now(UTC),
        shared_key_id=key_id,
        user_id=user_id,
        donor_id=user_id if key_id else None,
        api_endpoint="/v1/chat/completions",
        model=model,
        status=usage.UsageStatus.OK if committed else usage.UsageStatus.UPSTREAM_ERROR,
        success=committed,
        committed=committed,
        prompt_tokens=prompt,
        completion_tokens=completion,
        token_id=token_id,
    )


async def flush(pool: asyncpg.Pool, records: list[UsageRecord]) -> None:
    async with pool.acquire() as conn:
        await usage.write(conn, records, Prices(pool, {MODEL: PRICE}))
