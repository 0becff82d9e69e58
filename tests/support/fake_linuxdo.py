"""A fake Linux DO Connect (Discourse-style OAuth2 provider) as a real aiohttp server, and a
gateway wired to it.

The provider checks what the real one checks: the client id and redirect URI at authorize, HTTP
Basic client auth, a single-use code, the redirect URI again and the PKCE verifier at the token
endpoint, the bearer access token at the user endpoint. Tests choose who "signs in" with
`sign_in_as` and edit `profiles` between sign-ins (trust level drops, silencing).

`site_app(config)` is `create_app(config)` plus this issue's routes and contexts, added only when
`create_app` does not already have them, so these tests keep passing once it wires them itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from tests.support.fake_oidc import answer

ENGLISH = {"Accept-Language": "en"}
CLIENT_ID = "sharekey-test-client"
CLIENT_SECRET = "test-client-secret-0123456789"
AVATAR_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><rect width="8" height="8" fill="#e8a33d"/></svg>'
)


def profile(username: str, linux_do_id: int, **changes: Any) -> dict[str, Any]:
    """What /api/user answers, including fields the gateway must drop (api_key, email)."""
    return {
        "id": linux_do_id,
        "username": username,
        "name": f"{username.title()} Example",
        "avatar_template": f"/user_avatar/linux.do/{username}/{{size}}/1_2.png",
        "trust_level": 2,
        "active": True,
        "silenced": False,
        "email": f"{username}@example.com",
        "api_key": "provider-api-key-MUST-NOT-BE-KEPT",
        **changes,
    }


@dataclass
class Grant:
    username: str
    redirect_uri: str
    challenge: str
    used: bool = False


@dataclass
class FakeLinuxDo:
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    signed_in: str = "alice"  # who the authorize endpoint signs in
    grants: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    fail_token: bool = False  # the token endpoint answers 500
    pieces: int = 1  # the token and user answers in this many writes (fake_oidc.in_pieces)
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/oauth2/authorize", self._authorize)
        self.app.router.add_post("/oauth2/token", self._token)
        self.app.router.add_get("/api/user", self._user)
        self.app.router.add_get("/user_avatar/{tail:.*}", self._avatar)

    def url(self, path: str = "") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def sign_in_as(self, username: str, linux_do_id: int | None = None, **changes: Any) -> None:
        if username not in self.profiles:
            self.profiles[username] = profile(username, linux_do_id or 1000 + len(self.profiles))
        self.profiles[username].update(changes)
        self.signed_in = username

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        self.authorize_requests.append(dict(q))
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return web.Response(status=400, text="bad client or response type")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE required")
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(self.signed_in, q["redirect_uri"], q["code_challenge"])
        target = URL(q["redirect_uri"]).update_query(code=code, state=q.get("state", ""))
        return web.Response(status=302, headers={"Location": str(target)})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.token_requests.append({"headers": dict(request.headers), "form": dict(form)})
        if self.fail_token:
            return web.json_response({"error": "server_error"}, status=500)
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.grants.get(str(form.get("code", "")))
        if grant is None or grant.used or form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant.used = True
        if form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "invalid_grant", "error_description": "redirect_uri"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if digest != grant.challenge:
            return web.json_response({"error": "invalid_grant", "error_description": "code_verifier"}, status=400)
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = grant.username
        grant_doc = {"access_token": access, "token_type": "bearer", "expires_in": 3600}
        return await answer(request, grant_doc, self.pieces)

    async def _user(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        username = self.access_tokens.get(token) if scheme == "Bearer" else None
        if username is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return await answer(request, self.profiles[username], self.pieces)

    async def _avatar(self, request: web.Request) -> web.Response:
        return web.Response(body=AVATAR_SVG, content_type="image/svg+xml")


@dataclass
class Site:
    """The gateway (with pages, sign-in and the tokens API) on a fixed port, and its provider."""

    client: TestClient
    app: web.Application
    config: config_mod.Config
    pool: asyncpg.Pool
    provider: FakeLinuxDo

    @property
    def origin(self) -> str:
        return self.config.server.public_url

    async def sign_in(self, username: str = "alice", **changes: Any) -> aiohttp.ClientResponse:
        self.provider.sign_in_as(username, **changes)
        return await sign_in(self.client, self.provider)

    async def csrf_token(self, path: str = "/tokens") -> str:
        resp = await self.client.get(path)
        assert resp.status == 200, await resp.text()
        match = re.search(r'<meta name="csrf-token" content="([^"]+)">', await resp.text())
        assert match, "the page carries no CSRF token"
        return match[1]

    async def write_headers(self, path: str = "/tokens") -> dict[str, str]:
        """What our own pages send with a cookie-authenticated write."""
        return {"Origin": self.origin, "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": await self.csrf_token(path)}

    async def session_count(self) -> int:
        prefix = self.config.redis.key_prefix
        keys = [k async for k in self.app[appkeys.redis].scan_iter(match=f"{prefix}:v1:{{{prefix}}}:session:*")]
        return len(keys)


@pytest.fixture
async def provider(aiohttp_server: Any) -> FakeLinuxDo:
    fake = FakeLinuxDo()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def site(config: config_mod.Config, pool: asyncpg.Pool, provider: FakeLinuxDo, aiohttp_client: Any) -> Site:
    port = free_port()
    site_cfg = site_config(config, provider, port)
    app = site_app(site_cfg)
    # English pages, so that tests can read them; the language choice has its own tests.
    client = await aiohttp_client(TestServer(app, host="127.0.0.1", port=port), headers=ENGLISH)
    return Site(client, app, site_cfg, pool, provider)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_config(config: config_mod.Config, provider: FakeLinuxDo, port: int, **oauth: Any) -> config_mod.Config:
    public_url = f"http://127.0.0.1:{port}"
    config = config.replace("server", public_url=public_url)
    return config.replace(
        "oauth_linuxdo",
        **{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": f"{public_url}/auth/linuxdo/callback",
            "authorize_url": provider.url("/oauth2/authorize"),
            "token_url": provider.url("/oauth2/token"),
            "userinfo_url": provider.url("/api/user"),
            "avatar_base_url": provider.url("").rstrip("/"),
            **oauth,
        },
    )


def site_app(config: config_mod.Config) -> web.Application:
    return create_app(config)


async def sign_in(client: TestClient, provider: FakeLinuxDo, username: str | None = None) -> aiohttp.ClientResponse:
    """The browser's round trip: gateway -> provider's authorize -> gateway's callback. Returns
    the callback's response (a 303 into the site on success, an error page otherwise)."""
    if username is not None:
        provider.sign_in_as(username)
    start = await client.get("/auth/linuxdo/login", allow_redirects=False)
    assert start.status == 302, await start.text()
    back = await follow_provider(start.headers["Location"])
    return await client.get(back, allow_redirects=False)


async def follow_provider(authorize_url: str) -> str:
    """The provider's answer to an authorize URL: the callback path and query on the gateway."""
    async with aiohttp.ClientSession() as session:
        async with session.get(authorize_url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            location = URL(resp.headers["Location"])
    return str(location.relative())
