"""OpenID Connect and GitHub sign-in against fake providers (real aiohttp servers): the round
trips, accounts keyed by (provider, subject), every ID-token refusal, state reuse, the sign-in page."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.config import ConfigError
from gateway.relay import handlers
from gateway.store import users
from gateway.store.tokens import Caller
from gateway.web.signin import sessions
from tests.support.fake_linuxdo import ENGLISH, free_port
from tests.support.fake_oidc import CLIENT_ID, FakeGitHub, FakeOidc, follow, providers_config


@pytest.fixture
async def oidc(aiohttp_server: Any) -> FakeOidc:
    fake = FakeOidc()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def github(aiohttp_server: Any) -> FakeGitHub:
    fake = FakeGitHub()
    fake.server = await aiohttp_server(fake.app)
    return fake


@dataclass
class Gw:
    client: TestClient
    app: web.Application
    config: config_mod.Config
    pool: asyncpg.Pool

    async def start(self, provider: str) -> str:
        resp = await self.client.get(f"/auth/{provider}/login", allow_redirects=False)
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]

    async def sign_in(self, provider: str) -> Any:
        back = await follow(await self.start(provider))
        return await self.client.get(back, allow_redirects=False)


@pytest.fixture
async def make(config: config_mod.Config, pool: asyncpg.Pool, oidc: FakeOidc, github: FakeGitHub, aiohttp_client: Any):  # type: ignore[no-untyped-def]
    async def build(**oidc_changes: Any) -> Gw:
        port = free_port()
        cfg = providers_config(
            config.replace("server", public_url=f"http://127.0.0.1:{port}"), oidc, github, **oidc_changes
        )
        app = create_app(cfg)
        client = await aiohttp_client(TestServer(app, host="127.0.0.1", port=port), headers=ENGLISH)
        return Gw(client, app, cfg, pool)

    return build


@pytest.fixture
async def gw(make: Any) -> Gw:
    return await make()


async def _user(pool: asyncpg.Pool, provider: str, subject: str) -> asyncpg.Record | None:
    async with pool.acquire() as conn:
        return await conn.fetchrow(
            "SELECT u.* FROM users u JOIN user_identities i ON i.user_id = u.id"
            " WHERE i.provider = $1 AND i.subject = $2",
            provider,
            subject,
        )


async def test_oidc_sign_in(gw: Gw, oidc: FakeOidc) -> None:
    with capture_logs() as logs:
        location = await gw.start("corp")
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert location.startswith(oidc.issuer + "/authorize?")
        assert query["redirect_uri"] == gw.config.server.public_url + "/auth/corp/callback"
        assert query["client_id"] == CLIENT_ID and query["scope"] == "openid profile"
        assert query["code_challenge_method"] == "S256" and len(query["nonce"]) >= 43
        resp = await gw.client.get(await follow(location), allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/keys")
    assert resp.cookies[sessions.COOKIE]["httponly"]
    row = await _user(gw.pool, "corp", "oidc-sub-1")
    assert row is not None and row["username"] == "olga" and row["display_name"] == "Olga Example"
    assert row["trust_level"] == -1 and row["linux_do_id"] is None
    page = await gw.client.get("/keys", allow_redirects=False)
    assert page.status == 200 and ">olga</span>" in await page.text()
    [token_request] = oidc.token_requests
    assert token_request["form"]["redirect_uri"] == gw.config.server.public_url + "/auth/corp/callback"
    for access in oidc.access_tokens:  # provider tokens are used once, never kept or logged
        assert access not in str(logs)


async def test_github_sign_in(gw: Gw) -> None:
    resp = await gw.sign_in("github")
    assert (resp.status, resp.headers["Location"]) == (303, "/keys")
    row = await _user(gw.pool, "github", "4242")
    assert row is not None and row["username"] == "octo" and row["display_name"] == "Octo Cat"
    page = await gw.client.get("/keys", allow_redirects=False)
    assert page.status == 200 and ">octo</span>" in await page.text()


async def test_accounts_are_never_merged_by_name(gw: Gw, github: FakeGitHub) -> None:
    async with gw.pool.acquire() as conn:
        await conn.execute("INSERT INTO users (username, is_admin) VALUES ('olga', true)")
    assert (await gw.sign_in("corp")).status == 303
    first = await _user(gw.pool, "corp", "oidc-sub-1")
    assert first is not None and first["username"] == "olga~corp" and not first["is_admin"]
    github.user = {**github.user, "login": "olga"}
    assert (await gw.sign_in("github")).status == 303
    other = await _user(gw.pool, "github", "4242")
    assert other is not None and other["id"] != first["id"] and other["username"] == "olga~github"
    assert (await gw.sign_in("corp")).status == 303  # the same account again, not a new one
    again = await _user(gw.pool, "corp", "oidc-sub-1")
    assert again is not None and again["id"] == first["id"]


@pytest.mark.parametrize(
    ("changes", "stranger", "says"),
    [
        ({"iss": "https://evil.example"}, False, "wrong issuer"),
        ({"aud": "someone-else"}, False, "wrong audience"),
        ({"exp": int(time.time()) - 3600}, False, "has expired"),
        ({"nonce": "not-the-nonce"}, False, "wrong nonce"),
        ({}, True, "no valid signature"),
    ],
)
async def test_bad_id_tokens_are_refused(
    gw: Gw, oidc: FakeOidc, changes: dict[str, Any], stranger: bool, says: str
) -> None:
    oidc.id_token_changes = changes
    oidc.sign_with_stranger = stranger
    resp = await gw.sign_in("corp")
    assert resp.status == 400
    assert says in await resp.text()
    assert sessions.COOKIE not in resp.cookies
    assert await _user(gw.pool, "corp", "oidc-sub-1") is None


async def test_state_is_single_use_and_bound_to_the_browser(gw: Gw, aiohttp_client: Any) -> None:
    back = await follow(await gw.start("corp"))
    assert (await gw.client.get(back, allow_redirects=False)).status == 303
    again = await gw.client.get(back, allow_redirects=False)
    assert again.status == 400 and "already been used" in await again.text()

    # A callback carried to another browser (no pre-login cookie) is refused.
    back = await follow(await gw.start("github"))
    stranger = await aiohttp_client(TestServer(web.Application()), headers=ENGLISH)
    resp = await stranger.session.get(str(gw.client.make_url(back)), allow_redirects=False, headers=ENGLISH)
    assert resp.status == 400 and "another browser" in await resp.text()
    # ... and a state minted for one provider does not complete another's sign-in.
    state = parse_qs(urlsplit(await gw.start("corp")).query)["state"][0]
    resp = await gw.client.get(f"/auth/github/callback?state={state}&code=x", allow_redirects=False)
    assert resp.status == 400


async def test_sign_in_page_lists_the_providers(gw: Gw) -> None:
    resp = await gw.client.get("/keys", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/auth/login?next=/keys")
    page = await gw.client.get("/auth/login?next=/tokens")
    html = await page.text()
    assert page.status == 200
    assert "Sign in with corp" in html and "Sign in with GitHub" in html
    assert "/auth/corp/login?next=/tokens" in html and "Linux.do" not in html
    assert (await gw.client.get("/auth/nobody/login", allow_redirects=False)).status == 404


async def test_trust_claim_sets_the_level(make: Any, oidc: FakeOidc) -> None:
    oidc.claims = {**oidc.claims, "level": 3}
    gw = await make(trust_claim="level")
    assert (await gw.sign_in("corp")).status == 303
    row = await _user(gw.pool, "corp", "oidc-sub-1")
    assert row is not None and row["trust_level"] == 3


def test_no_trust_level_gets_the_plain_daily_limit(config: config_mod.Config) -> None:
    cfg = config.replace("limits", user_daily_requests=500, user_daily_requests_by_trust_level=(10, 20, 30))

    @dataclass
    class Req:  # what user_limits reads: request.app[appkeys.config]
        app: dict[Any, Any]

    request = Req({appkeys.config: cfg})

    def daily(level: int) -> int:
        caller = Caller(token_id="", user_id="u", username="u", trust_level=level, is_admin=False)
        return handlers.user_limits(request, caller).daily  # type: ignore[arg-type]

    assert (daily(-1), daily(0), daily(2), daily(9)) == (500, 10, 30, 30)


def test_oidc_config_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[oauth.oidc.corp]\nissuer = "https://id.example"\nclient_id = "a"\nclient_secret = "s3cr3t-value"\n'
        'trust_claim = "lvl"\n[oauth.oidc.club]\nissuer = "https://club.example"\nclient_id = "c"\n'
        'client_secret = "d"\nscopes = ["openid", "profile", "email"]\n[oauth.github]\nclient_id = "g"\n'
    )
    c = config_mod.load(path, env={})
    assert set(c.oauth_oidc) == {"corp", "club"}
    assert c.oauth_oidc["corp"].trust_claim == "lvl" and c.oauth_oidc["club"].scopes == ("openid", "profile", "email")
    assert "s3cr3t-value" not in repr(c) and c.oauth_github.client_id == "g"
    for bad, why in (
        ('[oauth.oidc.github]\nissuer = "https://x"\nclient_id = "a"\nclient_secret = "b"\n', "provider name"),
        ('[oauth.oidc.x]\nclient_id = "a"\nclient_secret = "b"\n', "issuer"),
        ('[oauth.oidc.x]\nissuer = "https://x"\nclient_id = "a"\nclient_secret = "b"\nfoo = 1\n', "foo"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=why):
            config_mod.load(path, env={})
    assert dataclasses.fields(config_mod.Oidc)


async def test_no_provider_at_all_points_to_the_sign_in_link(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(config), headers=ENGLISH)
    resp = await client.get("/keys", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/auth/login?next=/keys")
    page = await client.get("/auth/login")
    assert page.status == 503 and "sharekey login-link" in await page.text()


async def test_linuxdo_never_claims_another_providers_account_or_the_first_admin(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        admin = await users.add_local_user(conn, "admin", admin=True)
        olga = await users.upsert_identity_user(conn, users.IdentityProfile("corp", "s1", "olga", "Olga", None, -1))
        as_admin = users.LinuxDoProfile("77", "admin", "Not The Admin", None, 2)
        ld_admin = await users.upsert_linuxdo_user(conn, as_admin)
        assert (ld_admin.id, ld_admin.username, ld_admin.is_admin) != (admin.id, "admin", True)
        assert ld_admin.username == "admin~linuxdo" and not ld_admin.is_admin
        assert (await users.upsert_linuxdo_user(conn, as_admin)).id == ld_admin.id  # the same account again
        ld_olga = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("78", "olga", "Olga", None, 2))
        assert ld_olga.id != olga.id and ld_olga.username == "olga~linuxdo"
        still = await users.get_by_username(conn, "admin")
        assert still is not None and still.id == admin.id and still.is_admin


def test_a_trust_levels_table_wins_over_the_old_list(config: config_mod.Config) -> None:
    levels = {1: config_mod.TrustLevel(daily_requests=5, requests_per_minute=2), 3: config_mod.TrustLevel()}
    cfg = config.replace(
        "limits", user_daily_requests=500, user_daily_requests_by_trust_level=(10, 20), trust_levels=levels
    )

    @dataclass
    class Req:
        app: dict[Any, Any]

    def limits(level: int) -> tuple[int, int]:
        caller = Caller(token_id="", user_id="u", username="u", trust_level=level, is_admin=False)
        got = handlers.user_limits(Req({appkeys.config: cfg}), caller)  # type: ignore[arg-type]
        return got.daily, got.per_minute

    per_minute = cfg.limits.user_requests_per_minute
    assert (limits(-1), limits(0), limits(1), limits(3)) == (
        (500, per_minute),
        (10, per_minute),
        (5, 2),
        (20, per_minute),
    )
