"""One-time sign-in links: what `sharekey login-link NAME` prints, so that pages work without an
OAuth application (the operator signs in on a fresh install, or vouches for someone).

    issue(redis, prefix, user_id, minutes)  a random token (32 bytes, URL-safe); Redis keeps only
                                            its SHA-256, with the user id and the expiry time
    GET /auth/link/<token>                  (routed with web/oauth.py's) taken atomically (a Lua
                                            compare-and-set marks it used) -> a fresh browser
                                            session -> 303 to /keys

The record outlives its expiry by a day (marked "used" once taken), so that a link used twice or
too late is refused with a page saying which (410), while one never issued is a 400.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time

import redis.asyncio
import structlog
from aiohttp import web

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import redisnames
from gateway.store import users
from gateway.web import pages, sessions

log = structlog.get_logger(__name__)

PATH = "/auth/link/"
DEFAULT_MINUTES = 10
MAX_MINUTES = 7 * 24 * 60
REMEMBER_SECONDS = 86400  # how long after expiry a link is still recognised (to say why it fails)
USED = "used"
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")

# Take a link once: its record, and "used" in its place (same TTL); "used" if taken before.
TAKE = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
if v == 'used' then return v end
redis.call('SET', KEYS[1], 'used', 'KEEPTTL')
return v
"""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def key(prefix: str, token: str) -> str:
    return redisnames.login_link(prefix, _hash(token))


async def issue(client: redis.asyncio.Redis, prefix: str, user_id: str, minutes: float = DEFAULT_MINUTES) -> str:
    """A new single-use token for the user, valid `minutes`; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    record = json.dumps({"u": user_id, "exp": time.time() + minutes * 60})
    await client.set(key(prefix, token), record, ex=int(minutes * 60) + REMEMBER_SECONDS)
    return token


def url(public_url: str, token: str) -> str:
    return public_url.rstrip("/") + PATH + token


async def take(client: redis.asyncio.Redis, prefix: str, token: str) -> tuple[str, str | None]:
    """("ok", user id) or ("unknown" | "used" | "expired", None); a valid link is used up."""
    if not TOKEN.fullmatch(token):
        return "unknown", None
    raw = await client.eval(TAKE, 1, key(prefix, token))
    if raw is None:
        return "unknown", None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if text == USED:
        return "used", None
    record = json.loads(text)
    if time.time() > float(record["exp"]):
        return "expired", None
    return "ok", str(record["u"])


async def sign_in(request: web.Request) -> web.StreamResponse:
    app = request.app
    try:
        outcome, user_id = await take(
            app[appkeys.redis], app[appkeys.config].redis.key_prefix, request.match_info["token"]
        )
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await pages.error_page(request, 503, "login.title", "error.unavailable", retry=False)
    if outcome != "ok" or user_id is None:
        log.info("login_link_refused", reason=outcome)
        status = 400 if outcome == "unknown" else 410
        return await pages.error_page(request, status, "login.title", f"link.{outcome}", retry=False)
    try:
        async with app[appkeys.pg].acquire() as conn:
            user = await users.get_by_id(conn, user_id)
        if user is None:
            return await pages.error_page(request, 400, "login.title", "link.unknown", retry=False)
        response = pages.redirect(pages.DEFAULT_NEXT)
        await sessions.start(request, response, user.id)
    except (*POSTGRES_DOWN, *REDIS_DOWN) as e:
        log.warning("login_unavailable", error=str(e))
        return await pages.error_page(request, 503, "login.title", "error.unavailable", retry=False)
    log.info("login", user_id=user.id, via="link")
    return response
