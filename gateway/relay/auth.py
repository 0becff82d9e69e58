"""Who is calling with a gateway token: `Authorization: Bearer <token>`, for `/v1` and `/api` alike.

    header -> token cache (`store.tokens.TokenCache`) -> Caller, bound to the request's log line

One check for both surfaces; each passes the errors it renders, so `/v1` answers in the OpenAI
shape (`InvalidToken` 401, `NotConfigured` 503) and `/api` with its `ApiError`s. A missing,
malformed, unknown or revoked token is `refused`; a token the cache cannot check because
PostgreSQL is down is `unavailable` (a token it already knew keeps working: see TokenCache).
The browser session of `/api` is `web.sessions`' business, not this module's.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway import appkeys, metrics
from gateway.errors import POSTGRES_DOWN
from gateway.log import request_fields
from gateway.store.tokens import Caller


def bearer_token(request: web.Request, *, x_api_key: bool = False) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme in any case), or None; with
    `x_api_key` (the Anthropic route), `x-api-key: <token>` is taken too."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if x_api_key:
        return request.headers.get("x-api-key", "").strip() or None
    return None


async def token_caller(
    request: web.Request,
    *,
    refused: Callable[[], Exception],
    unavailable: Callable[[], Exception],
    x_api_key: bool = False,
) -> Caller:
    """The owner of the request's gateway token; raises `refused()` or `unavailable()`."""
    token = bearer_token(request, x_api_key=x_api_key)
    if token is None:
        raise refused()
    try:
        caller = await request.app[appkeys.token_cache].lookup(token)
    except POSTGRES_DOWN:
        metrics.postgres_error("tokens")
        raise unavailable() from None
    if caller is None:
        raise refused()
    request_fields(request)["user_id"] = caller.user_id
    return caller
