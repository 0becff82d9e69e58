"""The thanks board's data: who served how much, and how the pool stands.

    fetch(pool, today) + live_state(balancer, keys) -> build(...) -> Snapshot
    (`cache.Board.get()` keeps one per process: at most one PostgreSQL query per TTL_SECONDS)

A snapshot is built from one query over the aggregates (`donor_usage_daily`, the per-donor daily
rollup the usage flusher maintains, and a count of keys by state), never from the usage log, plus
two Redis reads through the balancer (today's reservations per key, cooldowns) and the in-process
key index (which keys serve which models). Refreshes are single-flight: a burst of visitors on an
expired snapshot starts one refresh, and only the very first visitors of a process wait for it;
after that a stale snapshot is served while the next one is built. A snapshot memoises what its
readers derive from it (rankings, JSON bodies, charts), so a cached view costs a dictionary lookup.

"Today" is the balancer's day (the calendar day in `balancer.timezone`): the day a call counted
against its key's limit is the day it is credited on. Anonymous donors are counted and ranked
like everyone else; what is shown of them is decided in `public()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from gateway.config import LinuxDo
from gateway.errors import REDIS_DOWN
from gateway.relay.balancer import Balancer
from gateway.relay.keyindex import PoolKey
from gateway.web.frame import avatar_allowed

log = structlog.get_logger(__name__)

PERIODS: dict[str, int | None] = {"today": 1, "7d": 7, "30d": 30, "all": None}  # days, None: all time
DEFAULT_PERIOD = "today"
HISTORY_DAYS = 30  # the charts' window; also the longest period counted by day
TTL_SECONDS = 3.0
RETRY_SECONDS = 1.0  # after a failed refresh, before the next try

# Reading the live state also fails when the balancer gives up on Redis' clock (RuntimeError from
# `usage_today`): the board then shows the last live state seen, as when Redis is down.
LIVE_STATE_ERRORS = (*REDIS_DOWN, RuntimeError)


class BoardUnavailable(Exception):
    """No snapshot yet and PostgreSQL did not answer."""


@dataclass(frozen=True, slots=True)
class Donor:
    id: str
    username: str
    display_name: str | None
    avatar_url: str | None  # only from the sign-in provider's host, else None (the placeholder)
    anonymous: bool
    active_keys: int  # pooled keys serving now (cooling ones included)
    cooling_keys: int
    disabled_keys: int
    daily_calls: tuple[int, ...]  # HISTORY_DAYS values, oldest first; the last one is today
    daily_tokens: tuple[int, ...]
    calls_total: int
    tokens_total: int
    last_served_at: datetime | None
    daily_value: tuple[float, ...] = ()  # USD of the calls served (their cost_estimate), per day
    value_total: float = 0.0

    @property
    def calls_today(self) -> int:
        return self.daily_calls[-1]

    @property
    def healthy(self) -> bool:
        """Has a key serving, and none cooling down or disabled (paused ones are the owner's choice)."""
        return self.active_keys > 0 and self.cooling_keys == 0 and self.disabled_keys == 0

    def calls(self, period: str) -> int:
        days = PERIODS[period]
        return self.calls_total if days is None else sum(self.daily_calls[-days:])

    def tokens(self, period: str) -> int:
        days = PERIODS[period]
        return self.tokens_total if days is None else sum(self.daily_tokens[-days:])

    def value(self, period: str) -> float:
        """USD of the calls served in the period, at the prices in force when each was served."""
        days = PERIODS[period]
        return self.value_total if days is None else sum(self.daily_value[-days:])


@dataclass(frozen=True, slots=True)
class ModelCapacity:
    model: str
    keys: int
    limit: int  # the daily limits of the pooled keys serving it
    used: int  # their calls today (reservations in flight included), each capped at its limit

    @property
    def left(self) -> int:
        return self.limit - self.used


@dataclass(frozen=True, slots=True)
class KeyCounts:
    active: int
    cooling: int
    disabled: int
    paused: int


@dataclass(frozen=True, slots=True)
class Totals:
    donors: int  # donors with a pooled key serving now
    active_keys: int
    models: int
    calls_today: int
    calls_left_today: int
    value_usd_today: float = 0.0  # what the pool's calls today are worth


@dataclass(frozen=True, slots=True)
class Live:
    """Redis' part of a snapshot: today's reservations per key and the keys cooling down."""

    used: dict[str, int]
    cooling: frozenset[str]


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    today: date
    days: tuple[date, ...]  # HISTORY_DAYS days ending today
    donors: tuple[Donor, ...]
    pool_daily_calls: tuple[int, ...]
    totals: Totals
    keys: KeyCounts
    capacity: tuple[ModelCapacity, ...]
    now_serving: Donor | None  # whose key served the latest committed call
    built_at: float  # time.time()
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def ranked(self, period: str) -> tuple[Donor, ...]:
        """Donors with calls in the period or a key serving now, most calls first."""
        key = ("ranked", period)
        if key not in self.memo:
            listed = [d for d in self.donors if d.active_keys or d.calls(period)]
            listed.sort(key=lambda d: (-d.calls(period), -d.tokens(period), -d.calls_total, d.id))
            self.memo[key] = tuple(listed)
        ranked: tuple[Donor, ...] = self.memo[key]
        return ranked

    def share_today(self, donor: Donor) -> float:
        total = self.totals.calls_today
        return round(donor.calls_today / total, 4) if total else 0.0

    def board(self, period: str, limit: int) -> dict[str, Any]:
        return {
            "period": period,
            "donors": [self.entry(d, rank, period) for rank, d in enumerate(self.ranked(period)[:limit], 1)],
            "totals": {
                "donors": self.totals.donors,
                "active_keys": self.totals.active_keys,
                "models": self.totals.models,
                "calls_today": self.totals.calls_today,
                "calls_left_today": self.totals.calls_left_today,
                "value_usd_today": round(self.totals.value_usd_today, 6),
            },
        }

    def entry(self, donor: Donor, rank: int, period: str) -> dict[str, Any]:
        return {
            "rank": rank,
            **public(donor),
            "active_keys": donor.active_keys,
            "calls": donor.calls(period),
            "tokens": donor.tokens(period),
            "calls_today": donor.calls_today,
            "calls_total": donor.calls_total,
            "value_usd": round(donor.value(period), 6),
            "value_usd_total": round(donor.value_total, 6),
            "share_today": self.share_today(donor),
            "last_served_at": donor.last_served_at.isoformat() if donor.last_served_at else None,
            "healthy": donor.healthy,
        }

    def board_json(self, period: str, limit: int) -> bytes:
        """`GET /api/shared-keys/thanks-board`'s body. Each entry is encoded once per snapshot and
        period (lazily, up to the largest limit asked for), so the memo stays as small as the board."""
        entries: list[bytes] = self.memo.setdefault(("entries", period), [])
        ranked = self.ranked(period)
        for rank in range(len(entries) + 1, min(limit, len(ranked)) + 1):
            entries.append(_json(self.entry(ranked[rank - 1], rank, period)))
        totals = self.memo.get("totals")
        if totals is None:
            totals = self.memo["totals"] = _json(self.board(period, 0)["totals"])
        return b'{"period":"%s","donors":[%s],"totals":%s}' % (period.encode(), b",".join(entries[:limit]), totals)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def public(donor: Donor) -> dict[str, Any]:
    """What anyone may see of who a donor is: nothing at all for an anonymous donor."""
    if donor.anonymous:
        return {"username": None, "display_name": None, "avatar_url": None, "anonymous": True}
    return {
        "username": donor.username,
        "display_name": donor.display_name or donor.username,
        "avatar_url": donor.avatar_url,
        "anonymous": False,
    }


# --- building a snapshot -------------------------------------------------------------------------

# Every donor: whoever has a pooled key (in any state) or was ever credited. The day arrays hold the
# last HISTORY_DAYS days that have a row (and any later day, should a clock run ahead).
SELECT_BOARD = """
WITH usage AS (
    SELECT donor_id,
           sum(calls)::bigint AS calls_total,
           sum(tokens)::bigint AS tokens_total,
           max(last_served_at) AS last_served_at,
           array_agg(day ORDER BY day) FILTER (WHERE day > $1::date - $2::int) AS days,
           array_agg(calls ORDER BY day) FILTER (WHERE day > $1::date - $2::int) AS day_calls,
           array_agg(tokens ORDER BY day) FILTER (WHERE day > $1::date - $2::int) AS day_tokens,
           sum(value_usd)::float8 AS value_total,
           array_agg(value_usd::float8 ORDER BY day) FILTER (WHERE day > $1::date - $2::int) AS day_values
    FROM donor_usage_daily
    GROUP BY donor_id
), keys AS (
    SELECT user_id,
           count(*) FILTER (WHERE status = 'disabled') AS disabled,
           count(*) FILTER (WHERE NOT is_active AND status <> 'disabled') AS paused
    FROM shared_keys
    WHERE NOT is_private
    GROUP BY user_id
)
SELECT u.id, u.username, u.display_name, u.avatar_url, u.anonymous,
       coalesce(k.disabled, 0) AS disabled, coalesce(k.paused, 0) AS paused,
       coalesce(s.calls_total, 0) AS calls_total, coalesce(s.tokens_total, 0) AS tokens_total, s.last_served_at,
       s.days, s.day_calls, s.day_tokens, coalesce(s.value_total, 0) AS value_total, s.day_values
FROM usage s
FULL JOIN keys k ON k.user_id = s.donor_id
JOIN users u ON u.id = coalesce(s.donor_id, k.user_id)
"""


async def fetch(pool: asyncpg.Pool, today: date) -> list[asyncpg.Record]:
    async with pool.acquire(timeout=5) as conn:
        rows: list[asyncpg.Record] = await conn.fetch(SELECT_BOARD, today, HISTORY_DAYS, timeout=10)
    return rows


async def live_state(balancer: Balancer, pooled: Iterable[PoolKey]) -> Live:
    used = await balancer.usage_today([k.id for k in pooled])
    cooling = await balancer.cooling()
    return Live(used, frozenset(cooling))


def build(today: date, rows: list[asyncpg.Record], pooled: list[PoolKey], live: Live, avatars: LinuxDo) -> Snapshot:
    days = tuple(today - timedelta(days=HISTORY_DAYS - 1 - i) for i in range(HISTORY_DAYS))
    slot = {d: i for i, d in enumerate(days)}
    serving: dict[str, int] = {}
    cooling: dict[str, int] = {}
    for key in pooled:
        serving[key.owner_id] = serving.get(key.owner_id, 0) + 1
        if key.id in live.cooling:
            cooling[key.owner_id] = cooling.get(key.owner_id, 0) + 1

    donors = []
    disabled = paused = 0
    for r in rows:
        user_id = str(r["id"])
        calls, tokens = [0] * HISTORY_DAYS, [0] * HISTORY_DAYS
        values = [0.0] * HISTORY_DAYS
        for day, c, t, v in zip(
            r["days"] or (), r["day_calls"] or (), r["day_tokens"] or (), r["day_values"] or (), strict=True
        ):
            i = slot.get(day)
            if i is not None:
                calls[i], tokens[i], values[i] = c, t, v
        disabled += r["disabled"]
        paused += r["paused"]
        donors.append(
            Donor(
                id=user_id,
                username=r["username"],
                display_name=r["display_name"],
                avatar_url=r["avatar_url"] if avatar_allowed(avatars, r["avatar_url"]) else None,
                anonymous=r["anonymous"],
                active_keys=serving.get(user_id, 0),
                cooling_keys=cooling.get(user_id, 0),
                disabled_keys=r["disabled"],
                daily_calls=tuple(calls),
                daily_tokens=tuple(tokens),
                calls_total=r["calls_total"],
                tokens_total=r["tokens_total"],
                last_served_at=r["last_served_at"],
                daily_value=tuple(values),
                value_total=r["value_total"],
            )
        )

    capacity = []
    models: dict[str, list[PoolKey]] = {}
    for key in pooled:
        for model in key.models:
            models.setdefault(model, []).append(key)
    for model, keys in sorted(models.items()):
        limit = sum(k.daily_limit for k in keys)
        used = sum(min(live.used.get(k.id, 0), k.daily_limit) for k in keys)
        capacity.append(ModelCapacity(model, len(keys), limit, used))

    cooling_keys = sum(cooling.values())
    served = [d for d in donors if d.last_served_at is not None]
    return Snapshot(
        today=today,
        days=days,
        donors=tuple(donors),
        pool_daily_calls=tuple(sum(d.daily_calls[i] for d in donors) for i in range(HISTORY_DAYS)),
        totals=Totals(
            donors=len(serving),
            active_keys=len(pooled),
            models=len(models),
            calls_today=sum(d.calls_today for d in donors),
            calls_left_today=sum(max(0, k.daily_limit - live.used.get(k.id, 0)) for k in pooled),
            value_usd_today=sum(d.daily_value[-1] for d in donors if d.daily_value),
        ),
        keys=KeyCounts(active=len(pooled) - cooling_keys, cooling=cooling_keys, disabled=disabled, paused=paused),
        capacity=tuple(capacity),
        now_serving=max(served, key=lambda d: d.last_served_at or datetime.min) if served else None,
        built_at=time.time(),
    )
