"""Linux.do ("Linux DO Connect", Discourse-style OAuth2) as one entry of the provider table: its
authorize URL, the code exchange and profile read, and who it admits.

    authorize_url(settings, state, challenge)   the configured authorize endpoint and redirect URI
    person(app, settings, code, verifier)       code exchanged (HTTP Basic client auth + verifier)
                                                -> /api/user read -> active, silenced and trust level
                                                checked (every sign-in) -> a `users.LinuxDoProfile`

The provider's access token is used once to read the profile and then dropped; of the profile
only the fields in `users.LinuxDoProfile` are kept (never its `api_key` or e-mail). A refused
account still has its trust level recorded (limits follow it at once): `Refused.user_id` names
the user so that the flow tells every process.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from gateway import appkeys
from gateway.config import LinuxDo
from gateway.errors import POSTGRES_DOWN
from gateway.store import users
from gateway.web import frame
from gateway.web.signin.provider_calls import ProviderError, Refused, provider_json

log = structlog.get_logger(__name__)

AVATAR_SIZE = "120"


def configured(settings: LinuxDo) -> bool:
    return bool(settings.client_id and settings.client_secret and settings.redirect_uri)


def authorize_url(settings: LinuxDo, state: str, challenge: str) -> str:
    return str(
        URL(settings.authorize_url).update_query(
            client_id=settings.client_id,
            redirect_uri=settings.redirect_uri,
            response_type="code",
            state=state,
            code_challenge=challenge,
            code_challenge_method="S256",
        )
    )


async def person(app: web.Application, settings: LinuxDo, code: str, verifier: str) -> users.LinuxDoProfile:
    """The account behind the code, once Linux.do vouches for it and the gateway admits it."""
    profile = await fetch_profile(app[appkeys.oauth_http], settings, code, verifier)
    refusal = refuse(profile, settings.min_trust_level)
    if refusal is not None:
        reason, values = refusal
        log.info("login_refused", reason=reason, linux_do_id=str(profile.get("id")))
        raise Refused(reason, values, await _record_trust_level(app, profile))
    return users.LinuxDoProfile(
        linux_do_id=str(profile["id"]),
        username=profile["username"],
        display_name=_display_name(profile),
        avatar_url=avatar_url(settings, profile.get("avatar_template")),
        trust_level=profile["trust_level"],
    )


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


async def _record_trust_level(app: web.Application, profile: dict[str, Any]) -> str | None:
    """A refused sign-in still updates a known user's trust level; the user's id, if known."""
    try:
        async with app[appkeys.pg].acquire() as conn:
            return await users.set_linuxdo_trust_level(conn, str(profile["id"]), profile["trust_level"])
    except POSTGRES_DOWN as e:
        log.warning("trust_level_not_recorded", error=str(e))
        return None
