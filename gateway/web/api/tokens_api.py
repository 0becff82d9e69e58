"""`/api/tokens`: a signed-in user lists, creates and revokes their own gateway tokens.

    GET    /api/tokens          {"tokens": [{id, label, hint, created_at, last_used_at, models, expires_at,
                                  daily_requests, requests_per_minute, daily_budget_usd, allowed_ips,
                                  calls_today, spent_today_usd}]}  (not revoked; today: the balancer's day)
    POST   /api/tokens {label, models, expires_at, daily_requests, requests_per_minute,
                        daily_budget_usd, allowed_ips}   (store/tokenfields.py; each optional)
                                201 {…, "token"}: the token itself, this once
    DELETE /api/tokens?id=…     204; revoked_at set, `token <sha256 hex>` published so every
                                process drops it from its cache within a second

Only a browser session manages tokens (with the Origin and CSRF checks for writes): a gateway
token cannot mint more tokens, so revoking a leaked one is final. Operators have
`sharekey tokens create`. Another user's token id answers 404, exactly like a missing one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from gateway import appkeys
from gateway.errors import REDIS_DOWN, ApiError, invalid
from gateway.log import request_fields
from gateway.net import events
from gateway.relay.balancer import BALANCER
from gateway.store import tokenfields, tokens
from gateway.store.tokens import TOKEN_CACHE, Caller
from gateway.web.signin import sessions

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

MAX_TOKENS = 50
NOT_SIGNED_IN = "Sign in to manage gateway tokens (or use `sharekey tokens create`)."
NOT_FOUND = "No such token."


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    label: str
    hint: str
    created_at: datetime
    last_used_at: datetime | None
    models: list[str]
    expires_at: datetime | None
    daily_requests: int | None
    requests_per_minute: int | None
    daily_budget_usd: Decimal | None
    allowed_ips: list[str]
    calls_today: int
    spent_today_usd: Decimal

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> TokenInfo:
        return cls(
            str(r["id"]),
            r["label"],
            r["token_hint"],
            r["created_at"],
            r["last_used_at"],
            list(r["models"]),
            r["expires_at"],
            r["daily_requests"],
            r["requests_per_minute"],
            r["daily_budget_usd"],
            [str(n) for n in r["allowed_ips"]],
            r["calls_today"],
            r["spent_today_usd"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "hint": self.hint,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "models": self.models,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "daily_requests": self.daily_requests,
            "requests_per_minute": self.requests_per_minute,
            "daily_budget_usd": str(self.daily_budget_usd) if self.daily_budget_usd is not None else None,
            "allowed_ips": self.allowed_ips,
            "calls_today": self.calls_today,
            "spent_today_usd": str(self.spent_today_usd.quantize(CENT)),
        }


CENT = Decimal("0.000001")  # what a call's estimated cost is kept to; the page rounds to cents
# Today's use: one row of the rollup per token (sql/0017), whatever the log holds.
LIST_TOKENS = """
SELECT t.id, t.label, t.token_hint, t.created_at, t.last_used_at, t.models, t.expires_at, t.daily_requests,
       t.requests_per_minute, t.daily_budget_usd, t.allowed_ips,
       coalesce(d.calls, 0) AS calls_today, coalesce(d.value_usd, 0) AS spent_today_usd
FROM api_tokens t LEFT JOIN token_usage_daily d ON d.token_id = t.id AND d.day = $2
WHERE t.user_id = $1 AND t.revoked_at IS NULL AND ($3::uuid IS NULL OR t.id = $3)
ORDER BY t.created_at DESC, t.id
"""


async def list_tokens(
    conn: asyncpg.Connection, user_id: str, today: str, token_id: str | None = None
) -> list[TokenInfo]:
    """The user's live tokens (or the one `token_id`) with their use on `today`, the balancer's day."""
    ident = uuid.UUID(token_id) if token_id else None
    rows = await conn.fetch(LIST_TOKENS, uuid.UUID(user_id), date.fromisoformat(today), ident)
    return [TokenInfo.from_record(r) for r in rows]


COUNT_TOKENS = "SELECT count(*) FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL"


async def create_token(
    conn: asyncpg.Connection, user_id: str, fields: dict[str, Any], today: str
) -> tuple[str, TokenInfo]:
    """(the token, its listing); refused past MAX_TOKENS live tokens. `fields`: `tokenfields.validate`'s."""
    async with conn.transaction():
        # One user's concurrent creations queue here, so the cap holds.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tokens:{user_id}")
        if await conn.fetchval(COUNT_TOKENS, uuid.UUID(user_id)) >= MAX_TOKENS:
            raise invalid("label", f"you have {MAX_TOKENS} tokens already; revoke one first")
        token, token_id = await tokens.create(conn, user_id, fields["label"], fields)
        (info,) = await list_tokens(conn, user_id, today, token_id)
    return token, info


REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now()
WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
RETURNING token_hash
"""


async def revoke_token(conn: asyncpg.Connection, user_id: str, token_id: str) -> bytes | None:
    """The revoked token's hash, or None when the user has no such live token."""
    try:
        key = uuid.UUID(token_id)
    except ValueError:
        return None
    return await conn.fetchval(REVOKE_TOKEN, key, uuid.UUID(user_id))


# --- handlers ------------------------------------------------------------------------------------


async def signed_in(request: web.Request) -> Caller:
    caller = await sessions.session_user(request)
    if caller is None:
        raise ApiError(401, "unauthorized", NOT_SIGNED_IN)
    request_fields(request)["user_id"] = caller.user_id
    return caller


async def read_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return body


@routes.get("/api/tokens")
async def tokens_get(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    async with request.app[appkeys.pg].acquire() as conn:
        listed = await list_tokens(conn, caller.user_id, request.app[BALANCER].today())
    return web.json_response({"tokens": [t.to_json() for t in listed]})


@routes.post("/api/tokens")
async def tokens_post(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    fields = tokenfields.validate(await read_object(request))  # every refusal before anything is written
    async with request.app[appkeys.pg].acquire() as conn:
        token, info = await create_token(conn, caller.user_id, fields, request.app[BALANCER].today())
    log.info("token_created", token_id=info.id)
    return web.json_response({**info.to_json(), "token": token}, status=201, headers={"Cache-Control": "no-store"})


@routes.delete("/api/tokens")
async def tokens_delete(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    app = request.app
    async with app[appkeys.pg].acquire() as conn:
        digest = await revoke_token(conn, caller.user_id, request.query.get("id", ""))
    if digest is None:
        raise ApiError(404, "not_found", NOT_FOUND)
    app[TOKEN_CACHE].drop_token(digest.hex())  # this process at once; the others by the event
    try:
        await events.publish(app[appkeys.redis], app[appkeys.config].redis.key_prefix, "token", digest.hex())
    except REDIS_DOWN as e:  # the cache TTL is the safety net; /v1 fails closed without Redis anyway
        log.warning("token_event_not_published", error=str(e))
    log.info("token_revoked", token_id=request.query.get("id"))
    return web.Response(status=204)
