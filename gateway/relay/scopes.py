"""What a caller may use beyond "has a valid token": its token's scope and its trust level's tier.

    in process, before any body is read or key picked (no Redis, no PostgreSQL):
      token_caller (relay/auth.py)   the token's expires_at, at request time    -> 401 token_expired
      admit_address                  the client address in the token's allowed_ips -> 403 ip_not_allowed
      admit_model                    the model in the token's models and the tier's -> 403 model_not_permitted
      allowed_models                 what /v1/models lists: the same filter
    in the pick's one Redis call (relay/lua/pick.lua, like the user's limits):
      user_limits                    the user's daily, per-minute and stream limits, by trust level
      token_limits                   the token's daily_requests, requests_per_minute, daily_budget_usd
    after a committed call:
      note_spend                     its estimated cost into the token's spend today (budgeted tokens only)

A trust level's tier is `[limits.trust_levels."N"]` (`config.TrustLevel`); a level without one, or
a field it leaves out, gets `[limits]`'s defaults (and the deprecated
`user_daily_requests_by_trust_level` for the daily limit). A caller without a trust claim (-1) gets
the defaults. Model names compare as the client spells them: a token or tier may list an alias.

The budget is estimated: a call's cost is known when it ends, so the calls admitted while the
token was under its budget may all finish over it. The overshoot is bounded by the token's calls in
flight when the budget is reached (each at most its own cost), plus those whose spend is still on
its way to Redis (a background call, milliseconds). A call on a model without a price costs 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

from aiohttp import web

from gateway import appkeys
from gateway.clientaddr import client_address
from gateway.config import Limits
from gateway.config.sections import TrustLevel
from gateway.errors import Forbidden
from gateway.relay.balancer import BALANCER
from gateway.relay.picks import TokenLimits, UserLimits
from gateway.relay.prices import PRICES, cost
from gateway.relay.usage import UsageRecord
from gateway.store.tokens import Caller

MICRO = Decimal(1_000_000)


def tier(limits: Limits, caller: Caller) -> TrustLevel | None:
    """The caller's trust level's `[limits.trust_levels."N"]`, if it has one."""
    return limits.trust_levels.get(caller.trust_level) if caller.trust_level >= 0 else None


def user_limits(request: web.Request, caller: Caller) -> UserLimits:
    limits = request.app[appkeys.config].limits
    daily = limits.user_daily_requests
    by_level = limits.user_daily_requests_by_trust_level  # deprecated, still read
    if by_level and caller.trust_level >= 0:  # -1: signed in elsewhere, no trust claim
        daily = by_level[min(max(caller.trust_level, 0), len(by_level) - 1)]
    per_minute, streams = limits.user_requests_per_minute, limits.user_concurrent_streams
    level = tier(limits, caller)
    if level is not None:
        daily = daily if level.daily_requests is None else level.daily_requests
        per_minute = per_minute if level.requests_per_minute is None else level.requests_per_minute
        streams = streams if level.concurrent_streams is None else level.concurrent_streams
    return UserLimits(daily=daily, per_minute=per_minute, streams=streams)


def token_limits(caller: Caller) -> TokenLimits | None:
    """The token's caps the pick counts, or None for a token without any (nothing is sent)."""
    scope = caller.scope
    budget = scope.daily_budget_usd
    capped = TokenLimits(
        token_id=caller.token_id,
        daily=scope.daily_requests or 0,
        per_minute=scope.requests_per_minute or 0,
        budget_micro_usd=int(budget * MICRO) if budget is not None and budget > 0 else 0,
    )
    return capped if capped.any else None


def micro_usd(cost: float | None) -> int:
    """A call's estimated cost as counted against a budget: whole micro-USD, rounded up."""
    return math.ceil(cost * 1_000_000) if cost else 0


def note_spend(app: web.Application, caller: Caller, record: UsageRecord) -> None:
    """A committed call of a token with a daily budget: its cost, priced as its usage row will be
    (the name the upstream was asked for), added to the token's spend today in the background."""
    if caller.scope.daily_budget_usd is None or not record.committed or PRICES not in app:
        return
    usd = cost(
        app[PRICES].get(record.upstream_model or record.model),
        record.prompt_tokens,
        record.completion_tokens,
        record.cache_read_tokens,
        record.cache_creation_tokens,
        record.server_tool_calls,
    )
    app[BALANCER].spend_later(record.day.isoformat(), caller.token_id, micro_usd(usd))


def admit_address(request: web.Request, caller: Caller) -> None:
    """403 ip_not_allowed for a client address outside the token's allowed_ips (if it has any)."""
    allowed = caller.scope.allowed_ips
    if not allowed:
        return
    address = client_address(request)
    if address is None or not any(address.version == net.version and address in net for net in allowed):
        raise Forbidden("This token may not be used from your address.", code="ip_not_allowed")


def admit_model(request: web.Request, caller: Caller, model: str) -> None:
    """403 model_not_permitted for a model outside the token's models, or its trust level's."""
    if caller.scope.models and model not in caller.scope.models:
        raise Forbidden(f"This token does not allow the model '{model[:256]}'.", code="model_not_permitted")
    level = tier(request.app[appkeys.config].limits, caller)
    if level is not None and level.models and model not in level.models:
        raise Forbidden(
            f"Members of trust level {caller.trust_level} may not use the model '{model[:256]}' on this gateway.",
            code="model_not_permitted",
        )


def allowed_models(request: web.Request, caller: Caller, names: Iterable[str]) -> list[str]:
    """`names` (what the caller's keys serve) that the token and the trust level allow."""
    level = tier(request.app[appkeys.config].limits, caller)
    allow = [m for m in (caller.scope.models, level.models if level is not None else ()) if m]
    return [n for n in names if all(n in a for a in allow)]
