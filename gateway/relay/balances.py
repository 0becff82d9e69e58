"""The balance endpoints community tools poll with a gateway token (DESIGN.md "Callers' tokens
and balances"): no upstream call, a few rows of `token_usage_daily` whatever the log holds.

    GET /v1/dashboard/billing/subscription, /dashboard/billing/subscription
        OpenAI's legacy shape, as new-api answers it: hard_limit_usd = the token's daily budget
        (100000000 when it has none: what new-api and neko-api-key-tool read as unlimited),
        access_until = its expiry in epoch seconds (0: never)
    GET /v1/dashboard/billing/usage?start_date=&end_date=, /dashboard/billing/usage
        total_usage in US cents over [start_date, end_date) (the balancer's days), daily_costs per day
    GET /api/usage/token
        new-api's shape: quota in its units (500000 per USD), granted/used/available for today

A sharekey budget is per day, so "granted" is today's budget and "used" today's estimated cost;
the usage endpoint sums whatever range it is asked for. Every answer, errors included, is in
OpenAI's shape and gets CORS like /v1 (`cors.BROWSER_PATHS`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, BadRequest, GatewayError, InvalidToken, NotConfigured, openai_error
from gateway.relay.auth import token_caller
from gateway.relay.balancer import BALANCER
from gateway.store.tokens import Caller

routes = web.RouteTableDef()

UNLIMITED_USD = 100000000  # new-api's "unlimited" hard limit, which neko-api-key-tool shows as such
QUOTA_PER_USD = 500000  # new-api's QuotaPerUnit
MAX_DAYS = 100  # OpenAI's old limit on a usage range; neko-api-key-tool asks for exactly 100 days
DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")  # neko-api-key-tool sends 2026-3-5, unpadded
BAD_TOKEN = "Invalid gateway token: pass `Authorization: Bearer shk_…` (create one on /tokens)."

Handler = Callable[[web.Request, Caller], Awaitable[dict[str, Any]]]


def _bad_token() -> GatewayError:
    return InvalidToken(BAD_TOKEN)


def _unavailable() -> GatewayError:
    return NotConfigured("The gateway cannot verify tokens right now; try again shortly.", retry_after=5)


def balance(*paths: str) -> Callable[[Handler], Handler]:
    """A GET route on each path: the caller authenticated by its gateway token, the body rendered
    as JSON, and a refusal in OpenAI's shape (the paths outside /v1 included)."""

    def register(fn: Handler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                caller = await token_caller(request, refused=_bad_token, unavailable=_unavailable)
                return web.json_response(await fn(request, caller), headers={"Cache-Control": "no-store"})
            except GatewayError as e:
                return openai_error(e)
            except POSTGRES_DOWN:
                return openai_error(_unavailable())

        for path in paths:
            routes.get(path)(handle)
        return fn

    return register


SPENT_ON = """
SELECT day, value_usd FROM token_usage_daily WHERE token_id = $1 AND day >= $2 AND day < $3 ORDER BY day
"""


async def spent(request: web.Request, caller: Caller, start: date, end: date) -> dict[date, Decimal]:
    """The token's estimated USD per day with use in [start, end): one index range of the rollup."""
    async with request.app[appkeys.pg].acquire() as conn:
        rows = await conn.fetch(SPENT_ON, uuid.UUID(caller.token_id), start, end)
    return {r["day"]: r["value_usd"] for r in rows}


def today(request: web.Request) -> date:
    return date.fromisoformat(request.app[BALANCER].today())


def limit_usd(caller: Caller) -> float:
    budget = caller.scope.daily_budget_usd
    return float(budget) if budget is not None else UNLIMITED_USD


@balance("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription")
async def billing_subscription(request: web.Request, caller: Caller) -> dict[str, Any]:
    limit = limit_usd(caller)
    expires = caller.scope.expires_at
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "access_until": int(expires) if expires is not None else 0,
    }


def _day(request: web.Request, name: str) -> date:
    text = request.query.get(name)
    if text is None:
        raise BadRequest(f"{name} is required (YYYY-MM-DD).", code="invalid_" + name)
    match = DATE.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError
        return date(*(int(part) for part in match.groups()))
    except ValueError:
        raise BadRequest(f"{name} must be a date, YYYY-MM-DD.", code="invalid_" + name) from None


@balance("/v1/dashboard/billing/usage", "/dashboard/billing/usage")
async def billing_usage(request: web.Request, caller: Caller) -> dict[str, Any]:
    start, end = _day(request, "start_date"), _day(request, "end_date")
    if end <= start:
        raise BadRequest("end_date must be after start_date.", code="invalid_end_date")
    if (end - start).days > MAX_DAYS:
        raise BadRequest(f"end_date must be at most {MAX_DAYS} days after start_date.", code="invalid_end_date")
    by_day = await spent(request, caller, start, end)
    zone = ZoneInfo(request.app[appkeys.config].balancer.timezone)
    daily = []
    for n in range((end - start).days):
        day = start + timedelta(days=n)
        cents = float(by_day.get(day, Decimal(0)) * 100)
        midnight = datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
        daily.append({"timestamp": midnight, "line_items": [{"name": "sharekey", "cost": cents}]})
    return {"object": "list", "total_usage": float(sum(by_day.values(), Decimal(0)) * 100), "daily_costs": daily}


def quota(usd: Decimal) -> int:
    return int(usd * QUOTA_PER_USD)


TOKEN_TODAY = """
SELECT t.label, coalesce(d.value_usd, 0) AS spent
FROM api_tokens t LEFT JOIN token_usage_daily d ON d.token_id = t.id AND d.day = $2
WHERE t.id = $1
"""


@balance("/api/usage/token")
async def usage_token(request: web.Request, caller: Caller) -> dict[str, Any]:
    async with request.app[appkeys.pg].acquire() as conn:
        row = await conn.fetchrow(TOKEN_TODAY, uuid.UUID(caller.token_id), today(request))
    if row is None:  # deleted since the cache saw it
        raise _bad_token()
    used = quota(row["spent"])
    budget = caller.scope.daily_budget_usd
    granted = quota(budget) if budget is not None else used  # unlimited: granted = used + 0 available
    expires = caller.scope.expires_at
    return {
        "code": True,
        "message": "ok",
        "data": {
            "object": "token_usage",
            "name": row["label"],
            "total_granted": granted,
            "total_used": used,
            "total_available": max(granted - used, 0),
            "unlimited_quota": budget is None,
            "model_limits": {model: True for model in sorted(caller.scope.models)},
            "model_limits_enabled": bool(caller.scope.models),
            "expires_at": int(expires) if expires is not None else 0,
        },
    }
