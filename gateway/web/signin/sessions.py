"""Browser sessions: server-side in Redis, named by an HttpOnly cookie, with a CSRF token each.
Every cookie the gateway sets goes through `set_cookie` here (`__Host-` names over https).

    login  -> start(): a fresh random id (any session the browser had is ended first)
    a page -> signed_in(): the session and its user, idle expiry pushed forward (GETEX)
    /api   -> session_user(): a `tokens.Caller` for cookie-authenticated API calls
    logout -> end(): deleted server-side, cookie cleared

A session is `<prefix>:v1:{<prefix>}:session:<id>` holding the user id, the CSRF token and the
creation time. It lapses after IDLE_SECONDS without use (the Redis TTL) and ABSOLUTE_SECONDS
after login whatever the use (checked on read).

Every state-changing request authenticated by the cookie must come from our own origin (the
`Origin` header equals `server.public_url`'s origin, and `Sec-Fetch-Site`, when sent, says
`same-origin`) and carry the session's CSRF token (`X-CSRF-Token` header or `csrf_token` form
field). Requests with a gateway token (`Authorization: Bearer`) are not cookie-authenticated and
never come here.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN, ApiError
from gateway.net import redisnames
from gateway.store import users
from gateway.store.tokens import Caller

log = structlog.get_logger(__name__)

COOKIE = "sharekey_session"
IDLE_SECONDS = 7 * 86400
ABSOLUTE_SECONDS = 30 * 86400
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


CSRF_FAILED = "This request did not come from the gateway's own pages; reload the page and try again."
UNAVAILABLE = "Cannot verify sign-ins right now; try again shortly."


class StoreUnavailable(Exception):
    """Redis or PostgreSQL did not answer while reading a session."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user_id: str
    csrf_token: str
    created_at: float


@dataclass(frozen=True, slots=True)
class SignedIn:
    session: Session
    user: users.User


def _key(app: web.Application, session_id: str) -> str:
    return redisnames.session(app[appkeys.config].redis.key_prefix, session_id)


def secure_cookies(app: web.Application) -> bool:
    return app[appkeys.config].server.public_url.lower().startswith("https://")


def cookie_name(app: web.Application, name: str, path: str = "/") -> str:
    """The name a cookie is set and read under. Over https it is `__Host-` prefixed (browsers then
    keep it only if it is Secure, Path=/ and has no Domain, so neither a sibling subdomain nor a
    plain-http page can plant or shadow it); one scoped to a path, which `__Host-` forbids, gets
    `__Secure-`. Over plain http (local use) the prefixes would be refused, so the bare name."""
    if not secure_cookies(app):
        return name
    return ("__Host-" if path == "/" else "__Secure-") + name


def get_cookie(request: web.Request, name: str, path: str = "/") -> str:
    return request.cookies.get(cookie_name(request.app, name, path), "")


def set_cookie(
    app: web.Application,
    response: web.StreamResponse,
    name: str,
    value: str,
    max_age: int,
    path: str = "/",
    samesite: str = "Lax",
) -> None:
    response.set_cookie(
        cookie_name(app, name, path),
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite=samesite,
        secure=secure_cookies(app) or None,
    )


def clear_cookie(app: web.Application, response: web.StreamResponse, name: str, path: str = "/") -> None:
    response.del_cookie(
        cookie_name(app, name, path), path=path, httponly=True, samesite="Lax", secure=secure_cookies(app) or None
    )


# --- the session store ---------------------------------------------------------------------------


async def start(request: web.Request, response: web.StreamResponse, user_id: str) -> Session:
    """A new session for the user, under a fresh id (no fixation): the browser's old one, if any, ends."""
    app = request.app
    await _delete(request)
    session = Session(secrets.token_urlsafe(32), user_id, secrets.token_urlsafe(32), time.time())
    value = json.dumps({"u": session.user_id, "c": session.csrf_token, "t": session.created_at})
    await app[appkeys.redis].set(_key(app, session.id), value, ex=IDLE_SECONDS)
    set_cookie(app, response, COOKIE, session.id, ABSOLUTE_SECONDS)
    return session


async def load(request: web.Request) -> Session | None:
    """The browser's live session; reading it pushes the idle expiry forward."""
    session_id = get_cookie(request, COOKIE)
    if not SESSION_ID.fullmatch(session_id):
        return None
    key = _key(request.app, session_id)
    client = request.app[appkeys.redis]
    try:
        raw = await client.getex(key, ex=IDLE_SECONDS)
    except REDIS_DOWN as e:
        raise StoreUnavailable(str(e)) from None
    if raw is None:
        return None
    data = json.loads(raw)
    session = Session(session_id, data["u"], data["c"], float(data["t"]))
    if time.time() - session.created_at > ABSOLUTE_SECONDS:
        try:
            await client.delete(key)
        except REDIS_DOWN as e:
            raise StoreUnavailable(str(e)) from None
        return None
    return session


async def end(request: web.Request, response: web.StreamResponse) -> None:
    """Ends the browser's session server-side and clears its cookie."""
    await _delete(request)
    clear_cookie(request.app, response, COOKIE)


async def _delete(request: web.Request) -> None:
    session_id = get_cookie(request, COOKIE)
    if SESSION_ID.fullmatch(session_id):
        await request.app[appkeys.redis].delete(_key(request.app, session_id))


async def signed_in(request: web.Request) -> SignedIn | None:
    """The session and its user, for pages. A session whose user was deleted counts as none."""
    session = await load(request)
    if session is None:
        return None
    try:
        async with request.app[appkeys.pg].acquire() as conn:
            user = await users.get_by_id(conn, session.user_id)
    except POSTGRES_DOWN as e:
        raise StoreUnavailable(str(e)) from None
    return SignedIn(session, user) if user is not None else None


# --- request checks ------------------------------------------------------------------------------


def origin_of(url: str) -> str:
    """`scheme://host[:port]`, lower case, without a default port: how browsers send `Origin`."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return ""
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def same_origin(request: web.Request) -> bool:
    """Fetch metadata and Origin both say the request comes from our own pages. A request that
    sends neither header is refused: every browser that can run our pages sends one of them."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is not None:
        expected = origin_of(request.app[appkeys.config].server.public_url)
        return origin != "null" and secrets.compare_digest(origin_of(origin), expected)
    return site == "same-origin"


async def csrf_ok(request: web.Request, session: Session) -> bool:
    """Origin/Fetch-Metadata check, then the session's CSRF token from the header or a form field."""
    if not same_origin(request):
        return False
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # cached: the handler can still read the body
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return sent is not None and secrets.compare_digest(sent.encode(), session.csrf_token.encode())


async def session_user(request: web.Request) -> Caller | None:
    """The signed-in user of a cookie-authenticated `/api` request, or None without a session.

    State-changing methods must pass the Origin and CSRF checks: failing them raises the /api
    403 (`csrf_failed`). A store outage raises the /api 503. The Caller has no token id."""
    try:
        found = await signed_in(request)
    except StoreUnavailable:
        raise ApiError(503, "service_unavailable", UNAVAILABLE) from None
    if found is None:
        return None
    if request.method not in SAFE_METHODS and not await csrf_ok(request, found.session):
        log.info(
            "csrf_refused",
            path=request.path,
            origin=request.headers.get("Origin"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
            expected=origin_of(request.app[appkeys.config].server.public_url),
        )
        raise ApiError(403, "csrf_failed", CSRF_FAILED)
    user = found.user
    return Caller(
        token_id="", user_id=user.id, username=user.username, trust_level=user.trust_level, is_admin=user.is_admin
    )
