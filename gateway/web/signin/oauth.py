"""Linux.do sign-in: OAuth2 authorization code flow ("Linux DO Connect", Discourse-style) with PKCE.

    /auth/linuxdo/login     state + PKCE verifier to Redis (10 min, single use), bound to a
                            pre-login cookie; 302 to the provider with the configured redirect URI
    /auth/linuxdo/callback  state taken (GETDEL) and matched to this browser's cookie -> code
                            exchanged (HTTP Basic client auth + verifier) -> /api/user read ->
                            active, silenced and trust level checked (every sign-in) -> user
                            upserted -> a fresh session -> back to the page that asked
    /auth/logout            the session ends server-side (Origin + CSRF checked)

The provider's access token is used once to read the profile and then dropped; of the profile
only the fields in `users.LinuxDoProfile` are kept (never its `api_key` or e-mail). The provider
is reached through a client session of its own: the shared upstream session refuses private
addresses, and the provider's URLs come from the operator's configuration, not from users.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from gateway import appkeys
from gateway.config import LinuxDo
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisnames
from gateway.store import users
from gateway.web import frame
from gateway.web.signin import loginlink, providers, sessions
from gateway.web.signin.provider_calls import ProviderError, provider_json

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
# The one-time links of `sharekey login-link` are another way in, served with the sign-in routes.
routes.get(loginlink.PATH + "{token}", name="login_link")(loginlink.confirm_page)
routes.post(loginlink.FORM_PATH, name="login_link_taken")(loginlink.sign_in)


STATE_SECONDS = 600
LOGIN_COOKIE = "sharekey_login"
LOGIN_COOKIE_PATH = "/auth/linuxdo/"
PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
NONCE = re.compile(r"[A-Za-z0-9_-]{43}")
AVATAR_SIZE = "120"


def _state_key(app: web.Application, state: str) -> str:
    return redisnames.oauth_state(app[appkeys.config].redis.key_prefix, state)


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def configured(settings: LinuxDo) -> bool:
    return bool(settings.client_id and settings.client_secret and settings.redirect_uri)


def _hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


@routes.get("/auth/linuxdo/login", name="login")
async def login(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.config].oauth_linuxdo
    if not configured(settings):
        return await frame.error_page(request, 503, "login.title", "login.not_configured", retry=False)
    # One pre-login cookie per browser, reused so that sign-ins started in two tabs both work.
    nonce = sessions.get_cookie(request, LOGIN_COOKIE, LOGIN_COOKIE_PATH)
    if not NONCE.fullmatch(nonce):
        nonce = secrets.token_urlsafe(32)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    record = {"browser": _hash(nonce), "verifier": verifier, "next": frame.local_path(request.query.get("next"))}
    try:
        await app[appkeys.redis].set(_state_key(app, state), json.dumps(record), ex=STATE_SECONDS)
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await frame.error_page(request, 503, "login.title", "error.unavailable")
    target = URL(settings.authorize_url).update_query(
        client_id=settings.client_id,
        redirect_uri=settings.redirect_uri,
        response_type="code",
        state=state,
        code_challenge=pkce_challenge(verifier),
        code_challenge_method="S256",
    )
    response = frame.redirect(str(target), 302)
    sessions.set_cookie(app, response, LOGIN_COOKIE, nonce, STATE_SECONDS, path=LOGIN_COOKIE_PATH)
    return response


@routes.get("/auth/linuxdo/callback", name="callback")
async def callback(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.config].oauth_linuxdo
    if not configured(settings):
        return await frame.error_page(request, 503, "login.title", "login.not_configured", retry=False)
    if "error" in request.query:
        return await frame.error_page(request, 400, "login.title", "login.cancelled")
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not state or not code:
        return await frame.error_page(request, 400, "login.title", "login.state_missing")
    try:
        raw = await app[appkeys.redis].getdel(_state_key(app, state)) if len(state) <= 128 else None
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await frame.error_page(request, 503, "login.title", "error.unavailable")
    if raw is None:
        log.info("login_refused", reason="state_unknown")
        return await frame.error_page(request, 400, "login.title", "login.state_invalid")
    record = json.loads(raw)
    nonce = sessions.get_cookie(request, LOGIN_COOKIE, LOGIN_COOKIE_PATH)
    if not secrets.compare_digest(_hash(nonce), record["browser"]):
        log.info("login_refused", reason="state_other_browser")
        return await frame.error_page(request, 400, "login.title", "login.state_browser")

    try:
        profile = await fetch_profile(app[appkeys.oauth_http], settings, code, record["verifier"])
    except ProviderError as e:
        log.warning("login_provider_failed", error=str(e))
        return await frame.error_page(request, 502, "login.title", "login.provider_failed")

    refusal = refuse(profile, settings.min_trust_level)
    if refusal is not None:
        reason, values = refusal
        log.info("login_refused", reason=reason, linux_do_id=str(profile.get("id")))
        await _record_trust_level(app, profile)
        response = await frame.error_page(request, 403, "login.title", f"login.{reason}", **values)
        await _end_login(request, response)
        return response

    person = users.LinuxDoProfile(
        linux_do_id=str(profile["id"]),
        username=profile["username"],
        display_name=_display_name(profile),
        avatar_url=avatar_url(settings, profile.get("avatar_template")),
        trust_level=profile["trust_level"],
    )
    try:
        async with app[appkeys.pg].acquire() as conn:
            user = await users.upsert_linuxdo_user(conn, person)
        await _announce_user(app, user.id)
        response = frame.redirect(frame.local_path(record["next"]))
        await sessions.start(request, response, user.id)
    except (*POSTGRES_DOWN, *REDIS_DOWN) as e:
        log.warning("login_unavailable", error=str(e))
        return await frame.error_page(request, 503, "login.title", "error.unavailable")
    sessions.clear_cookie(app, response, LOGIN_COOKIE, path=LOGIN_COOKIE_PATH)
    log.info("login", user_id=user.id, trust_level=user.trust_level)
    return response


async def fetch_profile(client: aiohttp.ClientSession, settings: LinuxDo, code: str, verifier: str) -> dict[str, Any]:
    """Exchange the code, read the user endpoint, forget the access token."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": settings.redirect_uri,
        "code_verifier": verifier,
    }
    basic = base64.b64encode(f"{settings.client_id}:{settings.client_secret}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
    try:
        async with client.post(settings.token_url, data=form, headers=headers, allow_redirects=False) as resp:
            grant = await provider_json(resp, "token endpoint")
        access_token = grant.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise ProviderError("token endpoint returned no access_token")
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        async with client.get(settings.userinfo_url, headers=headers, allow_redirects=False) as resp:
            profile = await provider_json(resp, "user endpoint")
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ProviderError(f"{type(e).__name__}") from None
    profile.pop("api_key", None)
    if not _valid_profile(profile):
        raise ProviderError("user endpoint returned an incomplete profile")
    return profile


def _valid_profile(p: dict[str, Any]) -> bool:
    return (
        isinstance(p.get("id"), int | str)
        and not isinstance(p.get("id"), bool)
        and str(p.get("id")) != ""
        and isinstance(p.get("username"), str)
        and 0 < len(p["username"]) <= 64
        and isinstance(p.get("trust_level"), int)
        and not isinstance(p.get("trust_level"), bool)
    )


def _display_name(profile: dict[str, Any]) -> str:
    name = profile.get("name")
    return name.strip()[:100] if isinstance(name, str) and name.strip() else profile["username"]


def refuse(profile: dict[str, Any], min_trust_level: int) -> tuple[str, dict[str, Any]] | None:
    """Why this account may not sign in (a catalogue key suffix and its values), or None."""
    if profile.get("active") is not True:
        return "inactive", {}
    if profile.get("silenced") not in (False, None):
        return "silenced", {}
    if profile["trust_level"] < min_trust_level:
        return "trust_level", {"required": min_trust_level, "level": profile["trust_level"]}
    return None


def avatar_url(settings: LinuxDo, template: Any) -> str | None:
    """The avatar at 120 px from Discourse's `avatar_template`; only on the provider's host."""
    if not isinstance(template, str) or not template:
        return None
    url = template.replace("{size}", AVATAR_SIZE)
    if url.startswith("/") and not url.startswith("//"):
        url = settings.avatar_base_url.rstrip("/") + url
    return url if frame.avatar_allowed(settings, url) else None


async def _record_trust_level(app: web.Application, profile: dict[str, Any]) -> None:
    """A refused sign-in still updates a known user's trust level: limits follow it at once."""
    try:
        async with app[appkeys.pg].acquire() as conn:
            user_id = await users.set_linuxdo_trust_level(conn, str(profile["id"]), profile["trust_level"])
    except POSTGRES_DOWN as e:
        log.warning("trust_level_not_recorded", error=str(e))
        return
    if user_id is not None:
        await _announce_user(app, user_id)


async def _announce_user(app: web.Application, user_id: str) -> None:
    """Token caches drop the user's callers, so a changed trust level applies everywhere."""
    try:
        await events.publish(app[appkeys.redis], app[appkeys.config].redis.key_prefix, "user", user_id)
    except REDIS_DOWN as e:
        log.warning("user_event_not_published", user_id=user_id, error=str(e))


async def _end_login(request: web.Request, response: web.StreamResponse) -> None:
    """After a refused sign-in this browser is signed out: it is not left signed in as anyone."""
    try:
        await sessions.end(request, response)
    except REDIS_DOWN as e:
        log.warning("session_not_ended", error=str(e))
    sessions.clear_cookie(request.app, response, LOGIN_COOKIE, path=LOGIN_COOKIE_PATH)


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


# The other providers (web/providers.py), after Linux.do's own routes so that those match first.
routes.get("/auth/login", name="sign_in_page")(providers.sign_in_page)
routes.get("/auth/{provider}/login", name="provider_login")(providers.login)
routes.get("/auth/{provider}/callback", name="provider_callback")(providers.callback)


def create_session() -> aiohttp.ClientSession:
    """Toward the sign-in provider: no cookies kept, a bounded wait."""
    return aiohttp.ClientSession(timeout=PROVIDER_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())
