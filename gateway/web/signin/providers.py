"""Sign-in beside Linux.do: any OpenID Connect provider (`[oauth.oidc.<name>]`) and GitHub
(`[oauth.github]`, plain OAuth2), with the same protections as web/oauth.py's Linux.do flow.

    GET /auth/login              the sign-in page: every configured provider (only Linux.do: straight there)
    GET /auth/<name>/login       state, PKCE verifier (and for OIDC a nonce) to Redis, 10 min, single
                                 use, bound to a pre-login cookie; 302 to the provider's authorize
                                 endpoint with the redirect URI `server.public_url` + /auth/<name>/callback
    GET /auth/<name>/callback    state taken (GETDEL), matched to this browser and provider -> code
                                 exchanged with the verifier -> OIDC: the ID token's signature checked
                                 against the provider's JWKS (joserfc), then `iss`, `aud`, `exp`,
                                 `iat`/`nbf`, `nonce`; GitHub: /user read -> account (provider, subject) found or
                                 created (web never merges it with another by name) -> a fresh session

Access and ID tokens are used for this one sign-in and dropped (web/provider_calls.py talks to the
providers). Routes are added to web/oauth.py's table.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from gateway import appkeys
from gateway.config import Config, GitHub, Oidc
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisnames
from gateway.store import users
from gateway.web import frame
from gateway.web.signin import sessions
from gateway.web.signin.provider_calls import (
    GITHUB,
    ProviderError,
    TokenRefused,
    discovery,
    github_profile,
    oidc_profile,
    redirect_uri,
)

log = structlog.get_logger(__name__)

STATE_SECONDS = 600
LOGIN_COOKIE = "sharekey_login"
NONCE_COOKIE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    label: str
    oidc: Oidc | None = None
    github: GitHub | None = None


def linuxdo_configured(config: Config) -> bool:
    s = config.oauth_linuxdo
    return bool(s.client_id and s.client_secret and s.redirect_uri)


def configured(config: Config) -> list[Provider]:
    """The providers other than Linux.do that this gateway offers, in a stable order."""
    out = [Provider(name, name, oidc=settings) for name, settings in sorted(config.oauth_oidc.items())]
    if config.oauth_github.client_id and config.oauth_github.client_secret:
        out.append(Provider(GITHUB, "GitHub", github=config.oauth_github))
    return out


def _find(request: web.Request) -> Provider | None:
    name = request.match_info["provider"]
    return next((p for p in configured(request.app[appkeys.config]) if p.name == name), None)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _pkce(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


# --- the sign-in page ----------------------------------------------------------------------------


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    config = request.app[appkeys.config]
    nxt = frame.local_path(request.query.get("next"))
    others = configured(config)
    if not others and linuxdo_configured(config):
        return frame.redirect(str(URL("/auth/linuxdo/login").with_query(next=nxt)), 302)
    choices = [("Linux.do", str(URL("/auth/linuxdo/login").with_query(next=nxt)))] if linuxdo_configured(config) else []
    choices += [(p.label, str(URL(f"/auth/{p.name}/login").with_query(next=nxt))) for p in others]
    # With no provider at all nothing can sign in here (503, as Linux.do's "not configured"): the
    # page points to `sharekey login-link`.
    return frame.render(request, "login.html", None, {"choices": choices}, status=200 if choices else 503)


# --- the flow ------------------------------------------------------------------------------------


async def login(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[appkeys.config]
    provider = _find(request)
    if provider is None:
        raise web.HTTPNotFound()
    client = app[appkeys.oauth_http]
    nonce_cookie = sessions.get_cookie(request, LOGIN_COOKIE, f"/auth/{provider.name}/")
    if not NONCE_COOKIE.fullmatch(nonce_cookie):
        nonce_cookie = secrets.token_urlsafe(32)
    state, verifier, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(64), secrets.token_urlsafe(32)
    query = {
        "response_type": "code",
        "redirect_uri": redirect_uri(config, provider.name),
        "state": state,
        "code_challenge": _pkce(verifier),
        "code_challenge_method": "S256",
    }
    try:
        if provider.oidc is not None:
            doc = await discovery(client, provider.oidc)
            authorize = doc["authorization_endpoint"]
            query |= {"client_id": provider.oidc.client_id, "scope": " ".join(provider.oidc.scopes), "nonce": nonce}
        else:
            assert provider.github is not None
            authorize = provider.github.authorize_url
            query |= {"client_id": provider.github.client_id, "scope": "read:user"}
    except ProviderError as e:
        log.warning("login_provider_failed", provider=provider.name, error=str(e))
        return await _error(request, 502, "login.provider_down", provider.label)
    record = {
        "provider": provider.name,
        "browser": _hash(nonce_cookie),
        "verifier": verifier,
        "nonce": nonce,
        "next": frame.local_path(request.query.get("next")),
    }
    try:
        await app[appkeys.redis].set(_state_key(app, state), json.dumps(record), ex=STATE_SECONDS)
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await frame.error_page(request, 503, "login.title", "error.unavailable", retry=False)
    response = frame.redirect(str(URL(authorize).update_query(query)), 302)
    sessions.set_cookie(app, response, LOGIN_COOKIE, nonce_cookie, STATE_SECONDS, path=f"/auth/{provider.name}/")
    return response


def _state_key(app: web.Application, state: str) -> str:
    return redisnames.oauth_state(app[appkeys.config].redis.key_prefix, state)


async def _error(request: web.Request, status: int, message: str, provider: str = "", **values: Any) -> web.Response:
    return await frame.error_page(request, status, "login.title", message, retry=False, provider=provider, **values)


async def callback(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[appkeys.config]
    provider = _find(request)
    if provider is None:
        raise web.HTTPNotFound()
    if "error" in request.query:
        return await _error(request, 400, "login.cancelled_at", provider.label)
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not state or not code:
        return await _error(request, 400, "login.state_missing")
    try:
        raw = await app[appkeys.redis].getdel(_state_key(app, state)) if len(state) <= 128 else None
    except REDIS_DOWN as e:
        log.warning("login_unavailable", error=str(e))
        return await frame.error_page(request, 503, "login.title", "error.unavailable", retry=False)
    record = json.loads(raw) if raw is not None else None
    if record is None or record.get("provider") != provider.name:
        log.info("login_refused", provider=provider.name, reason="state_unknown")
        return await _error(request, 400, "login.state_invalid")
    if not secrets.compare_digest(
        _hash(sessions.get_cookie(request, LOGIN_COOKIE, f"/auth/{provider.name}/")), record["browser"]
    ):
        log.info("login_refused", provider=provider.name, reason="state_other_browser")
        return await _error(request, 400, "login.state_browser")

    client = app[appkeys.oauth_http]
    try:
        if provider.oidc is not None:
            person = await oidc_profile(client, config, provider.name, provider.oidc, code, record)
        else:
            assert provider.github is not None
            person = await github_profile(client, config, provider.github, code, record["verifier"])
    except TokenRefused as e:
        log.info("login_refused", provider=provider.name, reason=f"id_token_{e.reason}", error=str(e))
        return await _error(request, 400, f"login.token_{e.reason}", provider.label)
    except ProviderError as e:
        log.warning("login_provider_failed", provider=provider.name, error=str(e))
        return await _error(request, 502, "login.provider_down", provider.label)

    try:
        async with app[appkeys.pg].acquire() as conn:
            user = await users.upsert_identity_user(conn, person)
        try:
            await events.publish(app[appkeys.redis], config.redis.key_prefix, "user", user.id)
        except REDIS_DOWN as e:
            log.warning("user_event_not_published", user_id=user.id, error=str(e))
        response = frame.redirect(frame.local_path(record["next"]))
        await sessions.start(request, response, user.id)
    except (*POSTGRES_DOWN, *REDIS_DOWN) as e:
        log.warning("login_unavailable", error=str(e))
        return await frame.error_page(request, 503, "login.title", "error.unavailable", retry=False)
    sessions.clear_cookie(app, response, LOGIN_COOKIE, path=f"/auth/{provider.name}/")
    log.info("login", user_id=user.id, provider=provider.name, trust_level=user.trust_level)
    return response
