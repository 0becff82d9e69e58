"""Keyset paging of donated keys (issue #15): `GET /api/shared-keys?limit=&after=` and `/keys`.

    page_keys(conn, owner_id=…|None, after=cursor|None, limit=100) -> (keys, next cursor | None)
    spend_days(conn, key_ids, today) -> {key id: [USD per day, oldest first, today last]}

Pages follow (created_at, id), each query a range scan of its index (`sql/0008`) that stops after
the page, so a page costs the same at 5,000 keys as at 50. A cursor is the last key's (created_at,
id), URL-safe base64 and opaque to clients; anything else is `BadCursor`.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg

from gateway.store.sharedkeys import SharedKey

# Keyset paging, (created_at, id) order: one query per case, so that each one is planned as a range
# scan of its index (`sql/0008`) that stops after the page, whatever the number of keys.
_PAGE_COLUMNS = """
SELECT k.*, u.username,
       CASE WHEN k.usage_day = (now() AT TIME ZONE $1)::date THEN k.usage_count_today ELSE 0 END AS used_today,
       CASE WHEN k.spend_day = (now() AT TIME ZONE $1)::date THEN k.spend_today_usd ELSE 0 END AS spend_today
FROM shared_keys k JOIN users u ON u.id = k.user_id
"""
# Ordered by user_id first (one value here) to match the owner index: the planner then reads that
# owner's keys in order rather than filtering every key's.
PAGE_OWNER = (
    _PAGE_COLUMNS
    + """WHERE k.user_id = $2 AND (k.user_id, k.created_at, k.id) > ($2, $3, $4)
ORDER BY k.user_id, k.created_at, k.id LIMIT $5
"""
)
PAGE_ALL = (
    _PAGE_COLUMNS
    + """WHERE (k.created_at, k.id) > ($2, $3)
ORDER BY k.created_at, k.id LIMIT $4
"""
)
# Before every key: created_at is NOT NULL, and -infinity sorts first.
_START = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
PAGE_MAX = 500
PAGE_DEFAULT = 100


SPEND_DAYS = 30
# The page's keys only, from the daily rollup (`sql/0010`): a range of its primary key per key.
_SPEND = """
SELECT shared_key_id::text AS id, day, value_usd FROM key_usage_daily
WHERE shared_key_id = ANY($1::uuid[]) AND day >= $2
"""


class BadCursor(ValueError):
    pass


def cursor(key: SharedKey) -> str:
    """The opaque `after` value for the keys that follow `key`: its (created_at, id), URL-safe."""
    raw = f"{key.created_at.isoformat()}|{key.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_cursor(text: str) -> tuple[datetime, uuid.UUID]:
    """Raises `BadCursor` for anything `cursor` did not write."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        when, _, key_id = raw.partition("|")
        at = datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError("no time zone")
        # In UTC, as PostgreSQL gets it: a year-1 or year-9999 time with an offset falls outside
        # what a datetime can hold, which asyncpg would only find when sending it.
        return at.astimezone(UTC), uuid.UUID(key_id)
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError, binascii.Error) as e:
        raise BadCursor(str(e)) from None


async def page_keys(
    conn: asyncpg.Connection,
    *,
    timezone: str,
    owner_id: str | None,
    after: str | None = None,
    limit: int = PAGE_DEFAULT,
) -> tuple[list[SharedKey], str | None]:
    """Up to `limit` keys after the cursor `after` (the start without it), one owner's or, with
    `owner_id=None`, everyone's; and the cursor of the next page, None after the last key.

    One row more than the page is read to know whether a next page exists. Raises `BadCursor`."""
    at, last_id = read_cursor(after) if after else _START
    if owner_id is None:
        rows = await conn.fetch(PAGE_ALL, timezone, at, last_id, limit + 1)
    else:
        rows = await conn.fetch(PAGE_OWNER, timezone, uuid.UUID(owner_id), at, last_id, limit + 1)
    keys = [SharedKey.from_record(r) for r in rows[:limit]]
    return keys, cursor(keys[-1]) if len(rows) > limit else None


async def spend_days(
    conn: asyncpg.Connection, key_ids: list[str], today: date, days: int = SPEND_DAYS
) -> dict[str, list[Decimal]]:
    """Each key's estimated spend (USD) on each of the `days` days up to `today`, oldest first,
    0 for a day without calls; one query however many keys and log rows."""
    first = today - timedelta(days=days - 1)
    spend = {key_id: [Decimal(0)] * days for key_id in key_ids}
    for r in await conn.fetch(_SPEND, key_ids, first):
        i = (r["day"] - first).days
        if 0 <= i < days:  # a day after `today` (another zone's clock) is left out
            spend[r["id"]][i] = r["value_usd"]
    return spend
