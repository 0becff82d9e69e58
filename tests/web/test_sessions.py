"""Browser sessions: cookies, expiry, logout, and the Origin + CSRF checks on cookie writes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestServer, make_mocked_request

from gateway import appkeys
from gateway.config import Config
from gateway.errors import ApiError
from gateway.web.signin import sessions
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures


def session_key(site: Site, session_id: str) -> str:
    prefix = site.config.redis.key_prefix
    return f"{prefix}:v1:{{{prefix}}}:session:{session_id}"


async def signed_in(site: Site, username: str = "alice") -> str:
    resp = await site.sign_in(username)
    assert resp.status == 303
    return resp.cookies[sessions.COOKIE].value


# --- the cookie and the store -----------------------------------------------------------------------


def test_cookie_is_secure_when_the_public_url_is_https(config: Config) -> None:
    for public_url, secure in (("https://gw.example", True), ("http://127.0.0.1:8080", False)):
        app = web.Application()
        app[appkeys.config] = config.replace("server", public_url=public_url)
        response = web.Response()
        sessions.set_cookie(app, response, sessions.COOKIE, "x" * 43, sessions.ABSOLUTE_SECONDS)
        header = response.cookies[sessions.cookie_name(app, sessions.COOKIE)].OutputString()
        assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
        assert ("Secure" in header) is secure


def _set_cookies(resp: Any) -> dict[str, str]:
    """Set-Cookie headers by cookie name, as sent (attributes included)."""
    return {h.split("=", 1)[0]: h for h in resp.headers.getall("Set-Cookie", [])}


async def test_cookies_are_host_prefixed_when_the_public_url_is_https(
    config: Config, pool: Any, provider: fake_linuxdo.FakeLinuxDo, aiohttp_client: Any
) -> None:
    port = fake_linuxdo.free_port()
    cfg = fake_linuxdo.site_config(config, provider, port).replace("server", public_url="https://gw.example")
    app = fake_linuxdo.site_app(cfg)
    # No cookie jar: the test sends exactly the cookies a browser would keep.
    client = await aiohttp_client(
        TestServer(app, host="127.0.0.1", port=port), headers=fake_linuxdo.ENGLISH, cookie_jar=DummyCookieJar()
    )
    provider.sign_in_as("alice")
    start = await client.get("/auth/linuxdo/login", allow_redirects=False)
    login = _set_cookies(start)["__Secure-sharekey_login"]  # scoped to its path: __Host- forbids that
    assert "Secure" in login and "Path=/auth/linuxdo/" in login and "Domain" not in login
    nonce = login.split(";")[0].split("=", 1)[1]
    back = await fake_linuxdo.follow_provider(start.headers["Location"])
    done = await client.get(back, allow_redirects=False, headers={"Cookie": f"__Secure-sharekey_login={nonce}"})
    assert done.status == 303, await done.text()
    cookies = _set_cookies(done)
    assert "sharekey_session" not in cookies
    session = cookies["__Host-sharekey_session"]
    assert "Secure" in session and "Path=/;" in session + ";" and "Domain" not in session and "HttpOnly" in session
    session_id = session.split(";")[0].split("=", 1)[1]

    page = await client.get("/keys", allow_redirects=False, headers={"Cookie": f"__Host-sharekey_session={session_id}"})
    assert page.status == 200 and ">alice</span>" in await page.text()
    # The bare name, which a sibling subdomain or a plain-http page could set, is not read.
    bare = await client.get("/keys", allow_redirects=False, headers={"Cookie": f"sharekey_session={session_id}"})
    assert bare.status == 302

    switch = await client.get("/lang/zh-CN", params={"next": "/keys"}, allow_redirects=False)
    lang = _set_cookies(switch)["__Host-lang"]
    assert "Secure" in lang and "Path=/" in lang
    zh = await client.get("/keys", headers={"Cookie": f"__Host-sharekey_session={session_id}; __Host-lang=zh-CN"})
    assert '<html lang="zh-CN">' in await zh.text()


async def test_session_lives_in_redis_with_idle_expiry(site: Site) -> None:
    session_id = await signed_in(site)
    redis = site.app[appkeys.redis]
    key = session_key(site, session_id)
    stored = json.loads(await redis.get(key))
    assert set(stored) == {"u", "c", "t"}  # user id, CSRF token, creation time: nothing else
    await redis.expire(key, 60)
    assert (await site.client.get("/keys")).status == 200
    assert await redis.ttl(key) > sessions.IDLE_SECONDS - 60  # use pushes the idle expiry forward


async def test_absolute_expiry_ends_a_session_however_used(site: Site) -> None:
    session_id = await signed_in(site)
    redis = site.app[appkeys.redis]
    key = session_key(site, session_id)
    stored = json.loads(await redis.get(key))
    stored["t"] = time.time() - sessions.ABSOLUTE_SECONDS - 1
    await redis.set(key, json.dumps(stored), ex=sessions.IDLE_SECONDS)
    resp = await site.client.get("/keys", allow_redirects=False)
    assert resp.status == 302
    assert await redis.exists(key) == 0


async def test_a_made_up_or_malformed_cookie_is_no_session(site: Site) -> None:
    for value in ("A" * 43, "not a session", "x" * 500):
        site.client.session.cookie_jar.update_cookies({sessions.COOKIE: value})
        assert (await site.client.get("/keys", allow_redirects=False)).status == 302
        assert (await site.client.get("/api/tokens")).status == 401


async def test_a_deleted_user_has_no_session(site: Site) -> None:
    await signed_in(site)
    async with site.pool.acquire() as conn:
        await conn.execute("DELETE FROM users WHERE username = 'alice'")
    assert (await site.client.get("/keys", allow_redirects=False)).status == 302


# --- logout -----------------------------------------------------------------------------------------


async def test_logout_ends_the_session_server_side(site: Site) -> None:
    session_id = await signed_in(site)
    token = await site.csrf_token()
    resp = await site.client.post(
        "/auth/logout", data={"csrf_token": token}, headers={"Origin": site.origin}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.cookies[sessions.COOKIE].value == ""
    assert await site.app[appkeys.redis].exists(session_key(site, session_id)) == 0
    # A copy of the old cookie (kept by an attacker, say) is worth nothing now.
    site.client.session.cookie_jar.update_cookies({sessions.COOKIE: session_id})
    assert (await site.client.get("/keys", allow_redirects=False)).status == 302
    assert (await site.client.get("/api/tokens")).status == 401


async def test_logout_needs_the_csrf_token_and_our_origin(site: Site) -> None:
    session_id = await signed_in(site)
    token = await site.csrf_token()
    refused = [
        ({}, {"Origin": site.origin}),  # no token
        ({"csrf_token": "wrong"}, {"Origin": site.origin}),
        # a cross-site form
        ({"csrf_token": token}, {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}),
        ({"csrf_token": token}, {}),  # neither Origin nor Fetch-Metadata
    ]
    for form, headers in refused:
        resp = await site.client.post("/auth/logout", data=form, headers=headers, allow_redirects=False)
        assert resp.status == 403, (form, headers)
        assert "did not come from" in await resp.text()
    assert await site.app[appkeys.redis].exists(session_key(site, session_id)) == 1
    ok = await site.client.post(
        "/auth/logout", data={"csrf_token": token}, headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    )
    assert ok.status == 303


# --- the checks on cookie-authenticated /api writes -------------------------------------------------


async def test_cookie_writes_need_our_origin_and_the_csrf_token(site: Site) -> None:
    await signed_in(site)
    good = await site.write_headers()
    token = good["X-CSRF-Token"]
    refused = [
        {"Origin": site.origin},  # no CSRF token
        {"Origin": site.origin, "X-CSRF-Token": "not-the-token"},
        {"Origin": "https://evil.example", "X-CSRF-Token": token},  # wrong Origin
        {"Origin": "null", "X-CSRF-Token": token},
        {"Origin": site.origin.replace("http://", "https://"), "X-CSRF-Token": token},  # another scheme
        {"Origin": site.origin, "Sec-Fetch-Site": "same-site", "X-CSRF-Token": token},  # a sibling subdomain
        {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": token},
        {"X-CSRF-Token": token},  # neither header
    ]
    for headers in refused:
        resp = await site.client.post("/api/tokens", json={"label": "x"}, headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["error"]["code"] == "csrf_failed"
    # A cross-site HTML form cannot set headers; it posts a form, with the victim's cookie.
    form = await site.client.post(
        "/api/tokens", data={"label": "x", "csrf_token": "guess"}, headers={"Origin": "https://evil.example"}
    )
    assert form.status == 403
    async with site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 0

    assert (await site.client.post("/api/tokens", json={"label": "ok"}, headers=good)).status == 201
    only_fetch_metadata = {"Sec-Fetch-Site": "same-origin", "X-CSRF-Token": token}
    assert (await site.client.post("/api/tokens", json={}, headers=only_fetch_metadata)).status == 201
    assert (await site.client.get("/api/tokens")).status == 200  # reads need neither


async def test_session_user_for_the_keys_api(site: Site) -> None:
    session_id = await signed_in(site)
    token = await site.csrf_token()
    cookie = {"Cookie": f"{sessions.COOKIE}={session_id}"}

    def request(method: str, headers: dict[str, str] | None = None) -> web.Request:
        return make_mocked_request(method, "/api/shared-keys", headers={**cookie, **(headers or {})}, app=site.app)

    caller = await sessions.session_user(request("GET"))
    assert caller is not None
    assert (caller.username, caller.trust_level, caller.is_admin, caller.token_id) == ("alice", 2, False, "")
    with pytest.raises(ApiError) as refused:
        await sessions.session_user(request("DELETE", {"Origin": site.origin}))
    assert (refused.value.status, refused.value.code) == (403, "csrf_failed")
    passed = await sessions.session_user(request("PUT", {"Origin": site.origin, "X-CSRF-Token": token}))
    assert passed is not None and passed.user_id == caller.user_id
    cookie.clear()
    assert await sessions.session_user(request("POST")) is None  # no session: the caller answers 401


@pytest.mark.parametrize(
    ("public_url", "origin", "same"),
    [
        ("https://gw.example", "https://gw.example", True),
        ("https://gw.example/", "https://GW.example:443", True),
        ("https://gw.example:8443", "https://gw.example:8443", True),
        ("https://gw.example", "http://gw.example", False),
        ("https://gw.example", "https://gw.example.evil", False),
        ("http://[::1]:8080", "http://[::1]:8080", True),
    ],
)
def test_origin_comparison(config: Config, public_url: str, origin: str, same: bool) -> None:
    app = web.Application()
    app[appkeys.config] = config.replace("server", public_url=public_url)
    req = make_mocked_request("POST", "/api/tokens", headers={"Origin": origin}, app=app)
    assert sessions.same_origin(req) is same
