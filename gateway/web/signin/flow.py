"""The sign-in routes, and the one OAuth2 authorization-code flow with PKCE that every row of the
provider table (`signin/providers.py`: Linux.do, OpenID Connect, GitHub) goes through.

    GET  /auth/login              the sign-in page: every configured provider (only Linux.do: straight there)
    GET  /auth/<name>/login       state, PKCE verifier and an OIDC nonce to Redis (10 min, single use),
                                  bound to a pre-login cookie scoped to /auth/<name>/; 302 to the
                                  provider's authorize URL (the row's `Way`)
    GET  /auth/<name>/callback    state taken (GETDEL), matched to this provider and this browser's
                                  cookie -> the row's `Way` turns the code into a person (checks its
                                  tokens, refuses accounts it does not admit) -> user stored -> every
                                  process told -> a fresh session -> back to the page that asked
    POST /auth/logout             the session ends server-side (Origin + CSRF checked)
    GET  /auth/link/<token>, POST /auth/link   the one-time links of `sharekey login-link` (loginlink.py)

An account the provider vouches for but the gateway refuses (`Refused`, e.g. Linux.do's trust
level) is a 403 page, and the browser is left signed out, not signed in as anyone. Access and ID
tokens are used for this one sign-in and dropped. /auth/linuxdo/… without `[oauth.linuxdo]`
answers 503 (not configured); any other unknown provider 404.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisnames
from gateway.web import frame
from gateway.web.signin import loginlink, providers, sessions
from gateway.web.signin.provider_calls import ProviderError, Refused, TokenRefused
from gateway.web.signin.providers import LINUXDO, Provider

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
# The one-time links of `sharekey login-link` are another way in, served with the sign-in routes.
routes.get(loginlink.PATH + "{token}", name="login_link")(loginlink.confirm_page)
routes.post(loginlink.FORM_PATH, name="login_link_taken")(loginlink.sign_in)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ProviderHandler = Callable[[web.Request, Provider], Awaitable[web.StreamResponse]]

STATE_SECONDS = 600
LOGIN_COOKIE = "sharekey_login"
NONCE = re.compile(r"[A-Za-z0-9_-]{43}")


def cookie_path(name: str) -> str:
    """The pre-login cookie is scoped to its provider's routes: one provider's cookie is never sent to another's."""
    return f"/auth/{name}/"


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _state_key(app: web.Application, state: str) -> str:
    return redisnames.oauth_state(app[appkeys.config].redis.key_prefix, state)


async def _error(request: web.Request, provider: Provider, status: int, message: str, **values: Any) -> web.Response:
    return await frame.error_page(
        request, status, "login.title", message, retry=provider.way.retry, provider=provider.label, **values
    )


def _per_provider(handler: ProviderHandler) -> Handler:
    """The route for /auth/<name>/…: the handler gets the table's row for <name>."""

    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        name = request.match_info["provider"]
        provider = providers.find(request.app[appkeys.config], name)
        if provider is not None:
            return await handler(request, provider)
        if name == LINUXDO:
            return await frame.error_page(request, 503, "login.title", "login.not_configured", retry=False)
        raise web.HTTPNotFound()

    return route


# --- the sign-in page ----------------------------------------------------------------------------


@routes.get("/auth/login", name="sign_in_page")
async def sign_in_page(request: web.Request) -> web.StreamResponse:
    nxt = frame.local_path(request.query.get("next"))
    offered = providers.configured(request.app[appkeys.config])
    choices = [(p.label, str(URL(f"{cookie_path(p.name)}login").with_query(next=nxt))) for p in offered]
    if len(offered) == 1 and offered[0].name == LINUXDO:
        return frame.redirect(choices[0][1], 302)
    # With no provider at all nothing can sign in here (503, as Linux.do's "not configured"): the
    # page points to `sharekey login-link`.
    return frame.render(request, "login.html", None, {"choices": choices}, status=200 if choices else 503)


# --- the flow ------------------------------------------------------------------------------------


@routes.get("/auth/{provider}/login", name="login")
@_per_provider
async def login(request: web.Request, provider: Provider) -> web.StreamResponse:
    app = request.app
    # One pre-login cookie per browser and provider, reused so that sign-ins started in two tabs both work.
    browser = sessions.get_cookie(request, LOGIN_COOKIE, cookie_path(provider.name))
    if not NONCE.fullmatch(browser):
        browser = secrets.token_urlsafe(32)
    state, verifier, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(64), secrets.token_urlsafe(32)
    try:
        target = await provider.way.authorize(app, provider, state, pkce_challenge(verifier), nonce)
    except ProviderError as e:
        log.warning("login_provider_failed", provider=provider.name, error=str(e))
        return await _error(request, provider, 502, provider.way.failed)
    record = {
        "provider": provider.name,
        "browser": _hash(browser),
        "verifier": verifier,
        "nonce": nonce,
        "next": frame.local_path(request.query.get("next")),
    }
    try:
        await app[appkeys.redis].set(_state_key(app, state), json.dumps(record), ex=STATE_SECONDS)
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await _error(request, provider, 503, "error.unavailable")
    response = frame.redirect(target, 302)
    sessions.set_cookie(app, response, LOGIN_COOKIE, browser, STATE_SECONDS, path=cookie_path(provider.name))
    return response


@routes.get("/auth/{provider}/callback", name="callback")
@_per_provider
async def callback(request: web.Request, provider: Provider) -> web.StreamResponse:
    app = request.app
    if "error" in request.query:
        return await _error(request, provider, 400, provider.way.cancelled)
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not state or not code:
        return await _error(request, provider, 400, "login.state_missing")
    try:
        raw = await app[appkeys.redis].getdel(_state_key(app, state)) if len(state) <= 128 else None
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await _error(request, provider, 503, "error.unavailable")
    record = json.loads(raw) if raw is not None else None
    if record is None or record.get("provider") != provider.name:
        log.info("login_refused", provider=provider.name, reason="state_unknown")
        return await _error(request, provider, 400, "login.state_invalid")
    browser = sessions.get_cookie(request, LOGIN_COOKIE, cookie_path(provider.name))
    if not secrets.compare_digest(_hash(browser), record["browser"]):
        log.info("login_refused", provider=provider.name, reason="state_other_browser")
        return await _error(request, provider, 400, "login.state_browser")

    try:
        person = await provider.way.person(app, provider, code, record)
    except TokenRefused as e:
        log.info("login_refused", provider=provider.name, reason=f"id_token_{e.reason}", error=str(e))
        return await _error(request, provider, 400, f"login.token_{e.reason}")
    except Refused as e:
        if e.user_id is not None:
            await _announce_user(app, e.user_id)
        response = await _error(request, provider, 403, f"login.{e.reason}", **e.values)
        await _end_login(request, response, provider)
        return response
    except ProviderError as e:
        log.warning("login_provider_failed", provider=provider.name, error=str(e))
        return await _error(request, provider, 502, provider.way.failed)

    try:
        async with app[appkeys.pg].acquire() as conn:
            user = await provider.way.store(conn, person)
        await _announce_user(app, user.id)
        response = frame.redirect(frame.local_path(record["next"]))
        await sessions.start(request, response, user.id)
    except (*POSTGRES_DOWN, *REDIS_DOWN) as e:
        log.warning("login_unavailable", error=str(e))
        return await _error(request, provider, 503, "error.unavailable")
    sessions.clear_cookie(app, response, LOGIN_COOKIE, path=cookie_path(provider.name))
    log.info("login", user_id=user.id, provider=provider.name, trust_level=user.trust_level)
    return response


async def _announce_user(app: web.Application, user_id: str) -> None:
    """Token caches drop the user's callers, so a changed trust level applies everywhere."""
    try:
        await events.publish(app[appkeys.redis], app[appkeys.config].redis.key_prefix, "user", user_id)
    except REDIS_DOWN as e:
        log.warning("user_event_not_published", user_id=user_id, error=str(e))


async def _end_login(request: web.Request, response: web.StreamResponse, provider: Provider) -> None:
    """After a refused sign-in this browser is signed out: it is not left signed in as anyone."""
    try:
        await sessions.end(request, response)
    except REDIS_DOWN as e:
        log.warning("session_not_ended", error=str(e))
    sessions.clear_cookie(request.app, response, LOGIN_COOKIE, path=cookie_path(provider.name))


# --- signing out ---------------------------------------------------------------------------------


@routes.post("/auth/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    try:
        session = await sessions.load(request)
    except sessions.StoreUnavailable:
        return await frame.error_page(request, 503, "error.title", "error.unavailable", retry=False)
    if session is not None and not await sessions.csrf_ok(request, session):
        log.info("csrf_refused", path=request.path, origin=request.headers.get("Origin"))
        return await frame.error_page(request, 403, "error.title", "error.csrf", retry=False)
    response = frame.redirect("/")
    try:
        await sessions.end(request, response)
    except REDIS_DOWN:
        return await frame.error_page(request, 503, "error.title", "error.unavailable", retry=False)
    if session is not None:
        log.info("logout", user_id=session.user_id)
    return response
