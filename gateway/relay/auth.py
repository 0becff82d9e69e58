"""Who is calling with a gateway token: `Authorization: Bearer <token>`, for `/v1` and `/api` alike.

    header -> token cache (`store.tokens.TokenCache`) -> Caller, bound to the request's log line

One check for both surfaces; each passes the errors it renders, so `/v1` answers in the OpenAI
shape (`InvalidToken` 401, `NotConfigured` 503) and `/api` with its `ApiError`s. A missing,
malformed, unknown or revoked token is `refused`; a token the cache cannot check because
PostgreSQL is down is `unavailable` (a token it already knew keeps working: see TokenCache); an
address that has had too many unknown tokens looked up is `limited` (429 with Retry-After, no
query); a token past its `expires_at` gets 401 token_expired, compared at each request,
not when the cache looked it up, so a token that expires while cached stops at once. The address
is the client's (`clientaddr`: the peer, or X-Forwarded-For from a `server.trusted_proxies` peer).
The browser session of `/api` is `web.signin.sessions`' business, not this module's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web

from gateway import metrics
from gateway.clientaddr import client_address
from gateway.errors import POSTGRES_DOWN, ApiError, InvalidToken, LimitReached
from gateway.log import request_fields
from gateway.store.tokens import TOKEN_CACHE, Caller, TooManyLookups

TOO_MANY_LOOKUPS = "Too many unknown tokens from this address; check the token and try again later."
EXPIRED = "This gateway token has expired; create a new one."


def bearer_token(request: web.Request, *, x_api_key: bool = False, google: bool = False) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme in any case), or None; with
    `x_api_key` (the Anthropic route), `x-api-key: <token>` is taken too; with `google` (Gemini's
    routes), `x-goog-api-key: <token>` or `?key=<token>`, as Google's clients send it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if x_api_key:
        return request.headers.get("x-api-key", "").strip() or None
    if google:
        return (request.headers.get("x-goog-api-key") or request.query.get("key") or "").strip() or None
    return None


async def token_caller(
    request: web.Request,
    *,
    refused: Callable[[], Exception],
    unavailable: Callable[[], Exception],
    limited: Callable[[int], Exception] | None = None,
    x_api_key: bool = False,
    google: bool = False,
) -> Caller:
    """The owner of the request's gateway token; raises `refused()`, `unavailable()` or
    `limited(retry_after)` (by default a `LimitReached`, rendered in the route's shape), and for
    an expired token an `InvalidToken` token_expired (the middleware renders it on `/api` too)."""
    token = bearer_token(request, x_api_key=x_api_key, google=google)
    if token is None:
        raise refused()
    try:
        address = client_address(request)
        caller = await request.app[TOKEN_CACHE].lookup(token, str(address) if address is not None else None)
    except TooManyLookups as e:
        retry_after = max(1, math.ceil(e.retry_after))
        raise (limited or _limited)(retry_after) from None
    except POSTGRES_DOWN:
        metrics.postgres_error("tokens")
        raise unavailable() from None
    if caller is None:
        raise refused()
    request_fields(request)["user_id"] = caller.user_id
    expires = caller.scope.expires_at
    if expires is not None and time.time() >= expires:
        raise InvalidToken(EXPIRED, code="token_expired")
    return caller


def _limited(retry_after: int) -> Exception:
    return LimitReached(TOO_MANY_LOOKUPS, code="too_many_token_lookups", retry_after=retry_after)


def api_limited(retry_after: int) -> Exception:
    """`limited` for `/api`: its JSON error shape, with Retry-After."""
    return ApiError(429, "too_many_token_lookups", TOO_MANY_LOOKUPS, retry_after=retry_after)
