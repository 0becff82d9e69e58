"""`/api/tokens`: a signed-in user lists, creates and revokes their own gateway tokens.

    GET    /api/tokens          {"tokens": [{id, label, hint, created_at, last_used_at}]}  (not revoked)
    POST   /api/tokens {label}  201 {…, "token"}: the token itself, this once
    DELETE /api/tokens?id=…     204; revoked_at set, `token <sha256 hex>` published so every
                                process drops it from its cache within a second

Only a browser session manages tokens (with the Origin and CSRF checks for writes): a gateway
token cannot mint more tokens, so revoking a leaked one is final. Operators have
`sharekey tokens create`. Another user's token id answers 404, exactly like a missing one.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from gateway import appkeys
from gateway.errors import REDIS_DOWN, ApiError, invalid
from gateway.log import request_fields
from gateway.net import events
from gateway.store import tokens
from gateway.store.tokens import TOKEN_CACHE, Caller
from gateway.web.signin import sessions

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

MAX_TOKENS = 50
LABEL_MAX = 64
NOT_SIGNED_IN = "Sign in to manage gateway tokens (or use `sharekey tokens create`)."
NOT_FOUND = "No such token."
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    label: str
    hint: str
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> TokenInfo:
        return cls(str(r["id"]), r["label"], r["token_hint"], r["created_at"], r["last_used_at"])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "hint": self.hint,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


TOKEN_COLUMNS = "id, label, token_hint, created_at, last_used_at"
LIST_TOKENS = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id
"""


async def list_tokens(conn: asyncpg.Connection, user_id: str) -> list[TokenInfo]:
    return [TokenInfo.from_record(r) for r in await conn.fetch(LIST_TOKENS, uuid.UUID(user_id))]


COUNT_TOKENS = "SELECT count(*) FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL"
GET_TOKEN = f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"


async def create_token(conn: asyncpg.Connection, user_id: str, label: str) -> tuple[str, TokenInfo]:
    """(the token, its listing); refused past MAX_TOKENS live tokens."""
    async with conn.transaction():
        # One user's concurrent creations queue here, so the cap holds.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tokens:{user_id}")
        if await conn.fetchval(COUNT_TOKENS, uuid.UUID(user_id)) >= MAX_TOKENS:
            raise invalid("label", f"you have {MAX_TOKENS} tokens already; revoke one first")
        token, token_id = await tokens.create(conn, user_id, label)
        row = await conn.fetchrow(GET_TOKEN, uuid.UUID(token_id))
    return token, TokenInfo.from_record(row)


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


def _label(body: dict[str, Any]) -> str:
    for name in body:
        if name != "label":
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise invalid(shown, f"unknown field {shown!r}")
    label = body.get("label", "")
    if label is None:
        return ""
    if not isinstance(label, str):
        raise invalid("label", "label must be a string")
    label = label.strip()
    if len(label) > LABEL_MAX:
        raise invalid("label", f"label must be at most {LABEL_MAX} characters")
    if CONTROL.search(label):
        raise invalid("label", "label must not contain control characters")
    return label


@routes.get("/api/tokens")
async def tokens_get(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    async with request.app[appkeys.pg].acquire() as conn:
        listed = await list_tokens(conn, caller.user_id)
    return web.json_response({"tokens": [t.to_json() for t in listed]})


@routes.post("/api/tokens")
async def tokens_post(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    label = _label(await read_object(request))
    async with request.app[appkeys.pg].acquire() as conn:
        token, info = await create_token(conn, caller.user_id, label)
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
