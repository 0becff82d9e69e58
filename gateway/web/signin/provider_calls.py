"""Talking to sign-in providers: the client session toward them, answers read to their end
(capped), OpenID Connect discovery (https endpoints under an https issuer) and JWKS (cached per
process for an hour; an unknown signing key fetches the set anew once), the authorize URLs of
OIDC and GitHub, the code exchange, the ID token checked with joserfc (signature, then `iss`,
`aud`, `exp`, `iat`/`nbf`, `nonce`), userinfo, and GitHub's token endpoint and /user.

Returns an `IdentityProfile`; provider tokens go no further than here. What a provider can
answer besides a profile is one of three exceptions, each a page of the flow's:
`ProviderError` (502), `TokenRefused` (400, the ID token) and `Refused` (403, the account).
The provider is reached through a client session of its own: the shared upstream session
refuses private addresses, and the provider's URLs come from the operator's configuration.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from yarl import URL

from gateway.config import Config, GitHub, Oidc
from gateway.store import users

CACHE_SECONDS = 3600
MAX_BODY = 1024 * 1024  # a JWKS, token or profile answer; more is refused
LEEWAY_SECONDS = 60
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
GITHUB = "github"
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint")
PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)

_discovery: dict[str, tuple[float, dict[str, Any]]] = {}
_jwks: dict[str, tuple[float, KeySet]] = {}


class ProviderError(Exception):
    """The provider did not complete the exchange; the message is for the log only."""


class TokenRefused(Exception):
    """The ID token is not acceptable; `reason` names the catalogue message (login.token_<reason>)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Refused(Exception):
    """The provider vouches for the account, but the gateway does not admit it: `reason` names the
    catalogue message (login.<reason>) filled with `values`; `user_id` is a known user whose row
    the refusal changed (the flow tells every process)."""

    def __init__(self, reason: str, values: dict[str, Any], user_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.values, self.user_id = reason, values, user_id


def create_session() -> aiohttp.ClientSession:
    """Toward the sign-in providers: no cookies kept, a bounded wait."""
    return aiohttp.ClientSession(timeout=PROVIDER_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())


def redirect_uri(config: Config, provider: str) -> str:
    return f"{config.server.public_url.rstrip('/')}/auth/{provider}/callback"


async def provider_json(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    """A sign-in provider's answer as a JSON object, read to its end with a size cap (Linux.do's
    too); ProviderError otherwise. orjson refuses hostile nesting instead of recursing."""
    if resp.status != 200:
        raise ProviderError(f"{what} answered {resp.status}")
    body = await _read_capped(resp, what)
    try:
        data = orjson.loads(body)
    except ValueError:
        raise ProviderError(f"{what} answered something other than JSON") from None
    if not isinstance(data, dict):
        raise ProviderError(f"{what} answered something other than a JSON object")
    return data


async def _read_capped(resp: aiohttp.ClientResponse, what: str) -> bytes:
    """The whole body, however many pieces it arrives in (`content.read(n)` returns only what is
    buffered), refused as soon as it passes MAX_BODY."""
    if (resp.content_length or 0) > MAX_BODY:
        raise ProviderError(f"{what} answered more than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY:
            raise ProviderError(f"{what} answered more than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _get(client: aiohttp.ClientSession, url: str, what: str, headers: dict[str, str] | None = None) -> Any:
    try:
        async with client.get(url, headers=headers or {"Accept": "application/json"}, allow_redirects=False) as resp:
            return await provider_json(resp, what)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ProviderError(f"{what}: {type(e).__name__}") from None


async def _post(client: aiohttp.ClientSession, url: str, form: dict[str, str], headers: dict[str, str]) -> Any:
    try:
        async with client.post(url, data=form, headers=headers, allow_redirects=False) as resp:
            return await provider_json(resp, "token endpoint")
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ProviderError(f"token endpoint: {type(e).__name__}") from None


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


async def discovery(client: aiohttp.ClientSession, settings: Oidc) -> dict[str, Any]:
    cached = _discovery.get(settings.issuer)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    doc = await _get(client, settings.issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery")
    if not _same_issuer(str(doc.get("issuer", "")), settings.issuer):
        raise ProviderError(f"discovery names another issuer: {doc.get('issuer')!r}")
    # Under an https issuer every endpoint must be https too: a discovery document pointing the
    # code, the client secret or the keys at plain http would hand them to anyone on the path.
    schemes = ("https://",) if settings.issuer.lower().startswith("https://") else ("https://", "http://")
    for key in ENDPOINTS:
        value = doc.get(key)
        if value is None and key == "userinfo_endpoint":  # optional: the ID token is enough
            continue
        if not isinstance(value, str) or not value.lower().startswith(("https://", "http://")):
            raise ProviderError(f"discovery lacks {key}")
        if not value.lower().startswith(schemes):
            raise ProviderError(f"discovery names a plain-http {key} under an https issuer")
    _discovery[settings.issuer] = (time.monotonic() + CACHE_SECONDS, doc)
    return doc


async def _keyset(client: aiohttp.ClientSession, uri: str, fresh: bool = False) -> KeySet:
    cached = _jwks.get(uri)
    if cached and cached[0] > time.monotonic() and not fresh:
        return cached[1]
    doc = await _get(client, uri, "jwks")
    try:
        keys = KeySet.import_key_set({"keys": [k for k in doc.get("keys", []) if k.get("use", "sig") == "sig"]})
    except (JoseError, ValueError, TypeError, KeyError) as e:
        raise ProviderError(f"jwks unreadable: {type(e).__name__}") from None
    _jwks[uri] = (time.monotonic() + CACHE_SECONDS, keys)
    return keys


async def verify_id_token(
    client: aiohttp.ClientSession, settings: Oidc, doc: dict[str, Any], id_token: str, nonce: str
) -> dict[str, Any]:
    """The ID token's claims once its signature (the provider's JWKS), issuer, audience, expiry and
    nonce are checked; TokenRefused says which failed."""
    claims: dict[str, Any] | None = None
    for fresh in (False, True):
        keys = await _keyset(client, doc["jwks_uri"], fresh=fresh)
        try:
            claims = dict(jwt.decode(id_token, keys, algorithms=ALGORITHMS).claims)
            break
        except (JoseError, ValueError, TypeError) as e:
            error = e
    if claims is None:
        raise TokenRefused("signature", type(error).__name__)
    if not isinstance(claims.get("iss"), str) or not _same_issuer(claims["iss"], settings.issuer):
        raise TokenRefused("issuer", str(claims.get("iss")))
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if settings.client_id not in audiences or (
        len(audiences) > 1 and claims.get("azp", settings.client_id) != settings.client_id
    ):
        raise TokenRefused("audience", str(aud))
    now = time.time()
    exp = claims.get("exp")
    if not _number(exp) or exp + LEEWAY_SECONDS < now:
        raise TokenRefused("expired", str(exp))
    # iat is required (OIDC Core 2); a token issued, or valid only, in the future is refused: a
    # provider's clock that far ahead, or a token minted ahead of time, is not this sign-in's.
    iat, nbf = claims.get("iat"), claims.get("nbf", 0)
    if not _number(iat) or not _number(nbf):
        raise TokenRefused("claims", f"iat={iat!r} nbf={nbf!r}")
    if iat > now + LEEWAY_SECONDS or nbf > now + LEEWAY_SECONDS:
        raise TokenRefused("not_yet_valid", f"iat={iat} nbf={nbf}")
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"], nonce):
        raise TokenRefused("nonce")
    if not isinstance(claims.get("sub"), str) or not claims["sub"] or len(claims["sub"]) > 255:
        raise TokenRefused("signature", "no subject")
    return claims


def _flow_query(config: Config, name: str, state: str, challenge: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "redirect_uri": redirect_uri(config, name),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }


async def oidc_authorize_url(
    client: aiohttp.ClientSession, config: Config, name: str, settings: Oidc, state: str, challenge: str, nonce: str
) -> str:
    doc = await discovery(client, settings)
    query = _flow_query(config, name, state, challenge)
    query |= {"client_id": settings.client_id, "scope": " ".join(settings.scopes), "nonce": nonce}
    return str(URL(doc["authorization_endpoint"]).update_query(query))


def github_authorize_url(config: Config, settings: GitHub, state: str, challenge: str) -> str:
    query = _flow_query(config, GITHUB, state, challenge) | {"client_id": settings.client_id, "scope": "read:user"}
    return str(URL(settings.authorize_url).update_query(query))


async def oidc_profile(
    client: aiohttp.ClientSession, config: Config, name: str, settings: Oidc, code: str, record: dict[str, Any]
) -> users.IdentityProfile:
    doc = await discovery(client, settings)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri(config, name),
        "code_verifier": record["verifier"],
    }
    basic = base64.b64encode(f"{_form(settings.client_id)}:{_form(settings.client_secret)}".encode()).decode()
    grant = await _post(
        client, doc["token_endpoint"], form, {"Authorization": f"Basic {basic}", "Accept": "application/json"}
    )
    id_token, access_token = grant.get("id_token"), grant.get("access_token")
    if not isinstance(id_token, str) or not id_token:
        raise ProviderError("token endpoint returned no id_token")
    claims = await verify_id_token(client, settings, doc, id_token, record["nonce"])
    info: dict[str, Any] = {}
    if isinstance(doc.get("userinfo_endpoint"), str) and isinstance(access_token, str) and access_token:
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        info = await _get(client, doc["userinfo_endpoint"], "userinfo", headers)
        if info.get("sub") != claims["sub"]:
            raise ProviderError("userinfo is about another subject")
    merged = {**info, **claims}
    return users.IdentityProfile(
        provider=name,
        subject=claims["sub"],
        username=_username(merged.get("preferred_username") or merged.get("nickname") or merged.get("name"), name),
        display_name=_text(merged.get("name")) or _text(merged.get("preferred_username")) or name,
        avatar_url=merged["picture"] if isinstance(merged.get("picture"), str) else None,
        trust_level=_trust_level(merged, settings.trust_claim),
    )


async def github_profile(
    client: aiohttp.ClientSession, config: Config, settings: GitHub, code: str, verifier: str
) -> users.IdentityProfile:
    form = {
        "client_id": settings.client_id,
        "client_secret": settings.client_secret,
        "code": code,
        "redirect_uri": redirect_uri(config, GITHUB),
        "code_verifier": verifier,
    }
    grant = await _post(client, settings.token_url, form, {"Accept": "application/json"})
    access_token = grant.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError(f"token endpoint returned no access_token ({grant.get('error')})")
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"}
    user = await _get(client, settings.user_url, "user endpoint", headers)
    uid = user.get("id")
    if not isinstance(uid, int) or isinstance(uid, bool) or not isinstance(user.get("login"), str):
        raise ProviderError("user endpoint returned an incomplete profile")
    return users.IdentityProfile(
        provider=GITHUB,
        subject=str(uid),
        username=_username(user["login"], GITHUB),
        display_name=_text(user.get("name")) or user["login"][:100],
        avatar_url=user["avatar_url"] if isinstance(user.get("avatar_url"), str) else None,
        trust_level=users.NO_TRUST_LEVEL,
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _form(value: str) -> str:
    """client_secret_basic: id and secret are form-encoded before joining (RFC 6749 2.3.1)."""
    return quote(value, safe="")


def _text(value: Any) -> str:
    return value.strip()[:100] if isinstance(value, str) and value.strip() else ""


def _username(value: Any, provider: str) -> str:
    name = re.sub(r"[^\w.\-]", "", value.strip()) if isinstance(value, str) else ""
    return name[:40] or provider


def _trust_level(claims: dict[str, Any], claim: str) -> int:
    """The numeric `trust_claim`, or -1 (limits.user_daily_requests) when none is configured."""
    if not claim:
        return users.NO_TRUST_LEVEL
    value = claims.get(claim)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0
