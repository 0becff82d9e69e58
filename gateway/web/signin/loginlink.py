"""One-time sign-in links: what `sharekey login-link NAME` prints, so that pages work without an
OAuth application (the operator signs in on a fresh install, or vouches for someone).

    issue(redis, prefix, user_id, minutes)  a random token (32 bytes, URL-safe); Redis keeps only
                                            its SHA-256, with the user id and the expiry time
    GET/HEAD /auth/link/<token>             (routed with signin/flow.py's) a confirmation page:
                                            "sign in as NAME?" and a button; the link is only
                                            read, never used up, so mail scanners and link
                                            previews that fetch it change nothing
    POST /auth/link                         the button: the token in the form body, from our own
                                            origin (Origin / Fetch Metadata) and from the browser
                                            that was shown the page (a SameSite=Strict cookie
                                            matching a form field) -> taken atomically (a Lua
                                            compare-and-set marks it used) -> a fresh browser
                                            session -> 303 to /keys

The confirmation stops login CSRF: a link (or an <img>) planted by someone else no longer signs a
browser into their account unasked. The token never reaches a log line in full: the request log
cuts a `{token}` path variable (gateway/log.py), and the POST carries it in the body.

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
from gateway.web import frame
from gateway.web.signin import sessions

log = structlog.get_logger(__name__)

PATH = "/auth/link/"
FORM_PATH = "/auth/link"
DEFAULT_MINUTES = 10
MAX_MINUTES = 7 * 24 * 60
REMEMBER_SECONDS = 86400  # how long after expiry a link is still recognised (to say why it fails)
USED = "used"
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
CONFIRM_COOKIE = "sharekey_link"  # ties the button to a browser that was shown the page
CONFIRM_FIELD = "confirm"
CONFIRM_SECONDS = 3600

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


def _outcome(raw: bytes | str | None) -> tuple[str, str | None]:
    if raw is None:
        return "unknown", None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if text == USED:
        return "used", None
    record = json.loads(text)
    if time.time() > float(record["exp"]):
        return "expired", None
    return "ok", str(record["u"])


async def peek(client: redis.asyncio.Redis, prefix: str, token: str) -> tuple[str, str | None]:
    """What `take` would answer, without using the link up."""
    if not TOKEN.fullmatch(token):
        return "unknown", None
    return _outcome(await client.get(key(prefix, token)))


async def take(client: redis.asyncio.Redis, prefix: str, token: str) -> tuple[str, str | None]:
    """("ok", user id) or ("unknown" | "used" | "expired", None); a valid link is used up."""
    if not TOKEN.fullmatch(token):
        return "unknown", None
    return _outcome(await client.eval(TAKE, 1, key(prefix, token)))


async def _refused(request: web.Request, outcome: str) -> web.Response:
    log.info("login_link_refused", reason=outcome)
    status = 400 if outcome == "unknown" else 410
    return await frame.error_page(request, status, "login.title", f"link.{outcome}", retry=False)


async def _unavailable(request: web.Request, error: Exception) -> web.Response:
    log.warning("login_unavailable", error=str(error))
    return await frame.error_page(request, 503, "login.title", "error.unavailable", retry=False)


async def confirm_page(request: web.Request) -> web.StreamResponse:
    """GET (and HEAD): who the link signs in, and the button that does it. Uses nothing up."""
    app = request.app
    token = request.match_info["token"]
    try:
        outcome, user_id = await peek(app[appkeys.redis], app[appkeys.config].redis.key_prefix, token)
        user = None
        if outcome == "ok" and user_id is not None:
            async with app[appkeys.pg].acquire() as conn:
                user = await users.get_by_id(conn, user_id)
    except (*POSTGRES_DOWN, *REDIS_DOWN) as e:
        return await _unavailable(request, e)
    if user is None:
        return await _refused(request, outcome if outcome != "ok" else "unknown")
    confirm = sessions.get_cookie(request, CONFIRM_COOKIE)
    if not TOKEN.fullmatch(confirm):
        confirm = secrets.token_urlsafe(32)
    context = {"username": user.username, "token": token, "confirm": confirm, "action": FORM_PATH}
    response = frame.render(request, "link.html", None, context)
    response.headers["X-Robots-Tag"] = "noindex"
    sessions.set_cookie(app, response, CONFIRM_COOKIE, confirm, CONFIRM_SECONDS, samesite="Strict")
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """POST from the confirmation page: the link is taken and this browser signed in."""
    app = request.app
    form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
    token, confirm = form.get("token"), form.get(CONFIRM_FIELD)
    cookie = sessions.get_cookie(request, CONFIRM_COOKIE)
    if not (
        sessions.same_origin(request)
        and isinstance(confirm, str)
        and cookie
        and secrets.compare_digest(cookie.encode(), confirm.encode())
    ):
        log.info(
            "login_link_refused",
            reason="not_confirmed",
            origin=request.headers.get("Origin"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
        )
        return await frame.error_page(request, 403, "login.title", "error.csrf", retry=False)
    try:
        outcome, user_id = await take(
            app[appkeys.redis], app[appkeys.config].redis.key_prefix, token if isinstance(token, str) else ""
        )
    except REDIS_DOWN as e:
        return await _unavailable(request, e)
    if outcome != "ok" or user_id is None:
        return await _refused(request, outcome)
    try:
        async with app[appkeys.pg].acquire() as conn:
            user = await users.get_by_id(conn, user_id)
        if user is None:
            return await _refused(request, "unknown")
        response = frame.redirect(frame.DEFAULT_NEXT)
        await sessions.start(request, response, user.id)
    except (*POSTGRES_DOWN, *REDIS_DOWN) as e:
        return await _unavailable(request, e)
    sessions.clear_cookie(app, response, CONFIRM_COOKIE)
    log.info("login", user_id=user.id, via="link")
    return response
