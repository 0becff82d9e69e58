"""Fake sign-in providers as real aiohttp servers: an OpenID Connect provider (discovery, JWKS,
authorize, token, userinfo; RSA keys made here with `cryptography`, ID tokens signed with joserfc)
and GitHub's OAuth2 (authorize, access_token, /user). Both check what the real ones check: the
client, the redirect URI, a single-use code and the PKCE verifier."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey
from yarl import URL

from gateway import config as config_mod

CLIENT_ID = "sharekey-oidc-client"
CLIENT_SECRET = "oidc-client-secret-0123456789"
GH_CLIENT_ID = "sharekey-gh-client"
GH_CLIENT_SECRET = "gh-client-secret-0123456789"


def rsa_jwk(kid: str) -> RSAKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return RSAKey.import_key(pem, {"kid": kid, "use": "sig", "alg": "RS256"})


async def in_pieces(request: web.Request, data: Any, pieces: int, status: int = 200) -> web.StreamResponse:
    """A JSON answer written in `pieces` writes with a short pause between them, as a provider
    behind a slow or chunking proxy sends it: the client has only part of it buffered at first."""
    body = json.dumps(data).encode()
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()  # no Content-Length: only the end of the stream says it is whole
    await resp.prepare(request)
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        await resp.write(body[start : start + step])
        await asyncio.sleep(0.02)
    await resp.write_eof()
    return resp


async def answer(request: web.Request, data: Any, pieces: int, status: int = 200) -> web.StreamResponse:
    """`web.json_response`, or the same JSON in pieces when `pieces` > 1."""
    if pieces > 1:
        return await in_pieces(request, data, pieces, status)
    return web.json_response(data, status=status)


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Grant:
    subject: str
    redirect_uri: str
    challenge: str
    nonce: str = ""
    used: bool = False


@dataclass
class FakeOidc:
    subject: str = "oidc-sub-1"
    claims: dict[str, Any] = field(default_factory=lambda: {"preferred_username": "olga", "name": "Olga Example"})
    id_token_changes: dict[str, Any] = field(default_factory=dict)  # claims to override (iss, aud, exp, iat …)
    sign_with_stranger: bool = False  # sign with a key not in the JWKS
    pieces: int = 1  # every JSON answer (discovery, JWKS, token, userinfo) in this many writes
    jwks_padding: int = 0  # bytes of filler in the JWKS answer (a provider answering too much)
    discovery_changes: dict[str, Any] = field(default_factory=dict)  # endpoints to override
    grants: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.key = rsa_jwk("k1")
        self.stranger = rsa_jwk("k1")  # same kid, other key: only the signature tells them apart
        self.app = web.Application()
        self.app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self.app.router.add_get("/jwks", self._jwks)
        self.app.router.add_get("/authorize", self._authorize)
        self.app.router.add_post("/token", self._token)
        self.app.router.add_get("/userinfo", self._userinfo)

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            **self.discovery_changes,
        }
        return await answer(request, doc, self.pieces)

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        doc: dict[str, Any] = {"keys": [self.key.as_dict(private=False)]}
        if self.jwks_padding:
            doc["padding"] = "x" * self.jwks_padding
        return await answer(request, doc, self.pieces)

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        self.authorize_requests.append(dict(q))
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code" or "openid" not in q.get("scope", ""):
            return web.Response(status=400, text="bad client, response type or scope")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE required")
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(self.subject, q["redirect_uri"], q["code_challenge"], q.get("nonce", ""))
        return web.Response(
            status=302, headers={"Location": str(URL(q["redirect_uri"]).update_query(code=code, state=q["state"]))}
        )

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.token_requests.append({"headers": dict(request.headers), "form": dict(form)})
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.grants.get(str(form.get("code", "")))
        if grant is None or grant.used or form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant.used = True
        if _challenge(str(form.get("code_verifier", ""))) != grant.challenge:
            return web.json_response({"error": "invalid_grant", "error_description": "code_verifier"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": grant.subject,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **self.claims,
            **self.id_token_changes,
        }
        claims = {k: v for k, v in claims.items() if v is not None}  # None in id_token_changes: left out
        key = self.stranger if self.sign_with_stranger else self.key
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = grant.subject
        grant_doc = {"access_token": access, "token_type": "Bearer", "id_token": id_token}
        return await answer(request, grant_doc, self.pieces)

    async def _userinfo(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        subject = self.access_tokens.get(token) if scheme == "Bearer" else None
        if subject is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return await answer(request, {"sub": subject, **self.claims}, self.pieces)


@dataclass
class FakeGitHub:
    user: dict[str, Any] = field(
        default_factory=lambda: {"id": 4242, "login": "octo", "name": "Octo Cat", "avatar_url": None}
    )
    grants: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/login/oauth/authorize", self._authorize)
        self.app.router.add_post("/login/oauth/access_token", self._token)
        self.app.router.add_get("/user", self._user)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != GH_CLIENT_ID or not q.get("code_challenge"):
            return web.Response(status=400, text="bad client or no PKCE")
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(str(self.user["id"]), q["redirect_uri"], q["code_challenge"])
        return web.Response(
            status=302, headers={"Location": str(URL(q["redirect_uri"]).update_query(code=code, state=q["state"]))}
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        # GitHub answers 200 with an "error" field for a bad code, as the real one does.
        if form.get("client_id") != GH_CLIENT_ID or form.get("client_secret") != GH_CLIENT_SECRET:
            return web.json_response({"error": "incorrect_client_credentials"})
        grant = self.grants.get(str(form.get("code", "")))
        if grant is None or grant.used or form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "bad_verification_code"})
        grant.used = True
        if _challenge(str(form.get("code_verifier", ""))) != grant.challenge:
            return web.json_response({"error": "bad_verification_code"})
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = dict(self.user)
        return web.json_response({"access_token": access, "token_type": "bearer", "scope": "read:user"})

    async def _user(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user = self.access_tokens.get(token) if scheme == "Bearer" else None
        if user is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response(user)


def providers_config(
    config: config_mod.Config, oidc: FakeOidc, github: FakeGitHub, **oidc_changes: Any
) -> config_mod.Config:
    settings = config_mod.Oidc(issuer=oidc.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **oidc_changes)
    config = dataclasses.replace(config, oauth_oidc={"corp": settings})
    return config.replace(
        "oauth_github",
        client_id=GH_CLIENT_ID,
        client_secret=GH_CLIENT_SECRET,
        authorize_url=github.url("/login/oauth/authorize"),
        token_url=github.url("/login/oauth/access_token"),
        user_url=github.url("/user"),
    )


async def follow(authorize_url: str) -> str:
    """The provider's answer to an authorize URL: the callback's path and query on the gateway."""
    async with aiohttp.ClientSession() as session:
        async with session.get(authorize_url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            return str(URL(resp.headers["Location"]).relative())
