"""Linux.do sign-in against a fake Linux DO Connect: the round trip, state and PKCE, refusals."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.store import users
from gateway.web.signin import flow, sessions
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import CLIENT_ID, CLIENT_SECRET, ENGLISH, Site, follow_provider, site_app

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures


async def user_row(pool: asyncpg.Pool, username: str) -> asyncpg.Record | None:
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM users WHERE username = $1", username)


# --- the round trip ------------------------------------------------------------------------------


async def test_full_sign_in_round_trip(site: Site) -> None:
    with capture_logs() as logs:
        resp = await site.sign_in("alice")
    assert resp.status == 303
    assert resp.headers["Location"] == "/keys"
    cookie = resp.cookies[sessions.COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    assert cookie["path"] == "/"
    assert await site.session_count() == 1

    # What the gateway sent the provider: the configured redirect URI, PKCE S256, Basic auth.
    [authorize] = site.provider.authorize_requests
    assert authorize["client_id"] == CLIENT_ID
    assert authorize["redirect_uri"] == site.config.oauth_linuxdo.redirect_uri
    assert authorize["response_type"] == "code" and authorize["code_challenge_method"] == "S256"
    [token_request] = site.provider.token_requests
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert token_request["headers"]["Authorization"] == f"Basic {basic}"
    verifier = token_request["form"]["code_verifier"]
    assert 43 <= len(verifier) <= 128
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert authorize["code_challenge"] == challenge

    row = await user_row(site.pool, "alice")
    assert row is not None
    assert (row["linux_do_id"], row["display_name"], row["trust_level"]) == ("1000", "Alice Example", 2)
    assert row["avatar_url"] == site.provider.url("/user_avatar/linux.do/alice/120/1_2.png")
    assert row["email"] is None  # only the fields the gateway needs are kept
    assert "MUST-NOT-BE-KEPT" not in str(logs)

    page = await site.client.get("/keys")
    assert page.status == 200
    html = await page.text()
    assert ">alice</span>" in html
    assert f'src="{row["avatar_url"]}"' in html


async def test_sign_in_returns_to_the_page_that_asked_and_only_to_this_site(site: Site) -> None:
    site.provider.sign_in_as("alice")
    for asked, landed in (("/tokens", "/tokens"), ("//evil.example/x", "/keys"), ("https://evil.example", "/keys")):
        start = await site.client.get("/auth/linuxdo/login", params={"next": asked}, allow_redirects=False)
        back = await site.client.get(await follow_provider(start.headers["Location"]), allow_redirects=False)
        assert (back.status, back.headers["Location"]) == (303, landed)


async def test_redirect_uri_comes_from_configuration_not_the_host_header(site: Site) -> None:
    headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    start = await site.client.get("/auth/linuxdo/login", headers=headers, allow_redirects=False)
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert query["redirect_uri"] == [site.config.oauth_linuxdo.redirect_uri]
    assert len(query["state"][0]) >= 32
    login_cookie = start.cookies[flow.LOGIN_COOKIE]
    assert login_cookie["httponly"] and login_cookie["samesite"] == "Lax"
    assert login_cookie["path"] == flow.cookie_path("linuxdo")


async def test_a_fresh_session_id_at_every_sign_in(site: Site) -> None:
    first = (await site.sign_in("alice")).cookies[sessions.COOKIE].value
    second = (await site.sign_in("alice")).cookies[sessions.COOKIE].value
    assert first != second
    assert await site.session_count() == 1  # the browser's earlier session ended


# --- state: missing, wrong, replayed, from another browser -----------------------------------------


async def test_missing_and_wrong_state_are_refused_without_a_session(site: Site) -> None:
    for query in ("?code=abc", "?state=&code=abc", "?state=not-a-state-we-issued&code=abc", ""):
        resp = await site.client.get(f"/auth/linuxdo/callback{query}", allow_redirects=False)
        assert resp.status == 400
        assert sessions.COOKIE not in resp.cookies
        html = await resp.text()
        assert "sign in again" in html.lower() or "start the sign-in again" in html
    assert await site.session_count() == 0
    assert site.provider.token_requests == []  # no code was exchanged


async def test_a_replayed_callback_is_refused(site: Site) -> None:
    site.provider.sign_in_as("alice")
    start = await site.client.get("/auth/linuxdo/login", allow_redirects=False)
    callback = await follow_provider(start.headers["Location"])
    assert (await site.client.get(callback, allow_redirects=False)).status == 303
    replay = await site.client.get(callback, allow_redirects=False)
    assert replay.status == 400
    assert "already been used" in await replay.text()
    assert sessions.COOKIE not in replay.cookies
    assert await site.session_count() == 1
    assert len(site.provider.token_requests) == 1


async def test_a_callback_in_another_browser_is_refused(site: Site) -> None:
    site.provider.sign_in_as("alice")
    start = await site.client.get("/auth/linuxdo/login", allow_redirects=False)
    callback = await follow_provider(start.headers["Location"])
    # The victim's browser is handed the attacker's callback: it never had the pre-login cookie.
    async with aiohttp.ClientSession(headers=ENGLISH) as other:
        async with other.get(site.client.make_url(callback), allow_redirects=False) as resp:
            assert resp.status == 400
            assert "another browser" in await resp.text()
            assert sessions.COOKIE not in resp.cookies
    # The state was spent by that attempt: single use, whoever presents it.
    assert (await site.client.get(callback, allow_redirects=False)).status == 400
    assert await site.session_count() == 0
    assert site.provider.token_requests == []


async def test_the_user_cancelling_at_the_provider(site: Site) -> None:
    resp = await site.client.get("/auth/linuxdo/callback?error=access_denied&state=x", allow_redirects=False)
    assert resp.status == 400
    assert "cancelled" in await resp.text()


async def test_provider_failure_shows_a_page_and_creates_nothing(site: Site) -> None:
    site.provider.fail_token = True
    resp = await site.sign_in("alice")
    assert resp.status == 502
    assert "could not confirm" in await resp.text()
    assert await site.session_count() == 0
    assert await user_row(site.pool, "alice") is None


async def test_sign_in_not_configured(config: Config, pool: asyncpg.Pool, aiohttp_client: Any) -> None:
    client = await aiohttp_client(site_app(config), headers=ENGLISH)  # the defaults: no client id
    for path in ("/auth/linuxdo/login", "/auth/linuxdo/callback?state=x&code=y"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 503
        assert "not configured" in await resp.text()


# --- who may sign in ------------------------------------------------------------------------------


async def test_silenced_inactive_and_low_trust_accounts_are_refused(site: Site) -> None:
    cases = [
        ("silent", {"silenced": True}, "silenced"),
        ("sleepy", {"active": False}, "not active"),
        ("newbie", {"trust_level": 0}, "trust level 1 or higher; yours is 0"),
    ]
    for username, changes, words in cases:
        resp = await site.sign_in(username, **changes)
        assert resp.status == 403, username
        assert words in await resp.text()
        assert sessions.COOKIE not in resp.cookies or not resp.cookies[sessions.COOKIE].value
        assert await user_row(site.pool, username) is None
    assert await site.session_count() == 0


async def test_a_trust_level_that_drops_takes_effect_at_the_next_sign_in(site: Site) -> None:
    assert (await site.sign_in("carol", trust_level=3)).status == 303
    assert (await user_row(site.pool, "carol"))["trust_level"] == 3
    assert (await site.sign_in("carol", trust_level=1)).status == 303
    assert (await user_row(site.pool, "carol"))["trust_level"] == 1

    refused = await site.sign_in("carol", trust_level=0)
    assert refused.status == 403
    assert (await user_row(site.pool, "carol"))["trust_level"] == 0  # limits follow it at once
    assert await site.session_count() == 0  # this browser's session ended too
    page = await site.client.get("/keys", allow_redirects=False)
    assert page.status == 302 and page.headers["Location"].startswith("/auth/linuxdo/login")

    assert (await site.sign_in("carol", trust_level=2)).status == 303


async def test_silencing_between_sign_ins_takes_effect(site: Site) -> None:
    assert (await site.sign_in("dave")).status == 303
    assert (await site.sign_in("dave", silenced=True)).status == 403


# --- the user record ------------------------------------------------------------------------------


async def test_an_operator_created_user_is_claimed_by_its_first_sign_in(site: Site) -> None:
    async with site.pool.acquire() as conn:
        admin = await users.add_user(conn, "erin", admin=True)
    assert (await site.sign_in("erin")).status == 303
    row = await user_row(site.pool, "erin")
    assert row is not None and str(row["id"]) == admin.id and row["is_admin"] and row["linux_do_id"] is not None


async def test_a_username_taken_over_on_linux_do_moves_to_its_new_owner(site: Site) -> None:
    site.provider.sign_in_as("frank", linux_do_id=501)
    assert (await site.sign_in("frank")).status == 303
    old = await user_row(site.pool, "frank")
    # On Linux.do the first frank renamed himself and someone else took the name.
    site.provider.profiles["frank-old"] = site.provider.profiles.pop("frank") | {"username": "frank-old"}
    site.provider.sign_in_as("frank", linux_do_id=502)
    assert (await site.sign_in("frank")).status == 303
    new = await user_row(site.pool, "frank")
    assert new["linux_do_id"] == "502" and new["id"] != old["id"]
    assert (await user_row(site.pool, "frank~501"))["id"] == old["id"]
    assert (await site.sign_in("frank-old")).status == 303
    assert (await user_row(site.pool, "frank-old"))["id"] == old["id"]


async def test_avatars_only_from_the_provider_host(site: Site) -> None:
    resp = await site.sign_in("gina", avatar_template="https://tracker.example/{size}/pixel.png")
    assert resp.status == 303
    assert (await user_row(site.pool, "gina"))["avatar_url"] is None
    html = await (await site.client.get("/keys")).text()
    assert "tracker.example" not in html
    assert 'src="/static/avatar.svg?v=' in html


async def test_profile_text_is_escaped(site: Site) -> None:
    resp = await site.sign_in("henry", name='<script>alert("x")</script>')
    assert resp.status == 303
    html = await (await site.client.get("/keys")).text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_pkce_challenge_matches_rfc_7636_example() -> None:
    assert flow.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
