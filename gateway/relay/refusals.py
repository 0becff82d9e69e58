"""What the caller is told when no key is taken: its own limits, the donors' audience, a pool
that is spent, cooling or at its caps. Each refusal in the route's error shape (the middleware
renders it), with Retry-After where waiting helps.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import BadRequest, Forbidden, GatewayError, LimitReached, NotConfigured, NotFound
from gateway.relay.call import Call
from gateway.relay.keyindex import KeyIndex
from gateway.relay.overlimit import OVER_LIMIT
from gateway.relay.picks import Pick, PickOutcome
from gateway.store.tokens import Caller

# The token's own caps (store.tokens.Scope): what the caller is told, and the code naming the cap.
TOKEN_LIMITS = {
    PickOutcome.TOKEN_DAILY: ("used its requests for today", "token_daily_limit"),
    PickOutcome.TOKEN_RPM: ("made too many requests this minute", "token_rate_limit"),
    PickOutcome.TOKEN_BUDGET: ("reached its daily budget", "token_budget_reached"),
}


def user_refusal(request: web.Request, caller: Caller, pick: Pick, refusal: GatewayError) -> GatewayError:
    """A refusal for the caller's own limits; one for the per-minute limit is remembered until the
    minute ends, so the caller's next requests are refused before their bodies are read."""
    if pick.outcome == PickOutcome.USER_RPM:
        request.app[OVER_LIMIT].note(caller.user_id, pick.retry_after)
    return refusal


def refuse_audience(index: KeyIndex, call: Call, caller: Caller) -> None:
    """Keys serve the model, but none may serve this caller (the donors' audience, or the paid
    features the request uses): say why. The caller's private keys may still serve it."""
    if index.private(caller.user_id, call.model, call.endpoint):
        return
    why = index.why_not(call.model, call.endpoint, caller, call.features)
    if why == "features":
        used = ", ".join(sorted(call.features))
        raise BadRequest(
            f"No key serving '{call.model}' is allowed by its donor to run {used}.", code="feature_not_allowed"
        )
    if why == "trust_level":
        need = index.min_trust(call.model, call.endpoint)
        raise Forbidden(
            f"The keys serving '{call.model}' are for members of trust level {need} or more"
            f" (yours: {max(caller.trust_level, 0)})."
        )
    if why == "not_on_list":
        raise Forbidden(f"The keys serving '{call.model}' are shared with named members only; you are not among them.")


def refusal_for(pick: Pick, model: str, response_id: str | None = None) -> GatewayError:
    if pick.outcome == PickOutcome.RESPONSE_NOT_FOUND:
        return NotFound(f"Response with id '{(response_id or '')[:256]}' not found.", code="response_not_found")
    if pick.outcome == PickOutcome.USER_DAILY:
        return LimitReached(
            "You have used your requests for today.", code="user_daily_limit", retry_after=pick.retry_after
        )
    if pick.outcome == PickOutcome.USER_RPM:
        return LimitReached("Too many requests this minute.", code="user_rate_limit", retry_after=pick.retry_after)
    if pick.outcome == PickOutcome.USER_STREAMS:
        return LimitReached("Too many streams at once.", code="user_stream_limit", retry_after=pick.retry_after)
    if pick.outcome in TOKEN_LIMITS:
        what, code = TOKEN_LIMITS[pick.outcome]
        return LimitReached(f"This token has {what}.", code=code, retry_after=pick.retry_after)
    if pick.outcome == PickOutcome.EXHAUSTED:
        return LimitReached(
            f"Every key serving '{model}' has reached its daily limit.",
            code="daily_limit_reached",
            retry_after=pick.retry_after,
        )
    if pick.outcome == PickOutcome.BUSY:
        return NotConfigured(
            f"Every key serving '{model}' is at its donor's per-minute or concurrency cap; try again shortly.",
            code="pool_busy",
            retry_after=pick.retry_after,
        )
    # Capped: a disabled key cools "for years" until every index drops it, moments later.
    return NotConfigured(
        f"Every key serving '{model}' is cooling down; try again shortly.",
        retry_after=min(max(1, pick.retry_after), 60),
    )
