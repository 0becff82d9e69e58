"""One-time sign-in links (`sharekey login-link`): the CLI prints a URL whose page asks before it
signs in (a POST from that page takes the link), it signs in once, and a link used twice, expired or
never issued is refused with a page saying why. HEAD, GET and link previews never use it up, a
POST from elsewhere is refused, and the token never reaches a log line in full."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from gateway import appkeys
from gateway import config as config_mod
from gateway.ops import cli
from gateway.store import users
from gateway.web.signin import loginlink, sessions
from tests.support import fake_linuxdo
from tests.support.clirun import sharekey
from tests.support.fake_linuxdo import Site

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures


async def _link_via_cli(site: Site, cli_env: dict[str, str], name: str, *extra: str) -> str:
    env = {**cli_env, "SHAREKEY_SERVER_PUBLIC_URL": site.config.server.public_url}
    r = sharekey("login-link", name, *extra, env=env)
    assert r.code == 0, r.err
    assert r.out.count("\n") == 1, "stdout holds only the URL"
    return r.out.strip()


HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


async def confirm(site: Site, path: str, client: Any = None, **headers: str) -> Any:
    """What a browser does with a link: open its page, press the button (a same-origin POST)."""
    client = client or site.client
    page = await client.get(path, allow_redirects=False)
    assert page.status == 200, await page.text()
    fields = dict(HIDDEN.findall(await page.text()))
    assert set(fields) == {"token", loginlink.CONFIRM_FIELD}
    headers = {"Origin": site.origin, "Sec-Fetch-Site": "same-origin", **headers}
    return await client.post(loginlink.FORM_PATH, data=fields, headers=headers, allow_redirects=False)


async def test_cli_link_signs_in_once(site: Site, cli_env: dict[str, str], pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        carol = await users.add_user(conn, "carol")
    url = await _link_via_cli(site, cli_env, "carol")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == site.config.server.public_url
    assert parts.path.startswith("/auth/link/") and len(parts.path) == len("/auth/link/") + 43

    # Only the token's hash is in Redis.
    token = parts.path.rsplit("/", 1)[1]
    prefix = site.config.redis.key_prefix
    stored = [k async for k in site.app[appkeys.redis].scan_iter(match=f"{prefix}:*loginlink*")]
    assert stored == [loginlink.key(prefix, token).encode()]
    assert token.encode() not in stored[0]

    resp = await confirm(site, parts.path)
    assert (resp.status, resp.headers["Location"]) == (303, "/keys")
    cookie = resp.cookies[sessions.COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    page = await site.client.get("/keys", allow_redirects=False)
    assert page.status == 200
    assert ">carol</span>" in await page.text()
    assert await site.session_count() == 1

    # The same link again: refused, and the browser's session is untouched.
    again = await site.client.get(parts.path, allow_redirects=False)
    assert again.status == 410
    assert "already been used" in await again.text()
    assert carol.id


async def test_new_session_id_at_link_sign_in(site: Site, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    async with pool.acquire() as conn:
        dave = await users.add_user(conn, "dave")
    prefix = site.config.redis.key_prefix
    first = await loginlink.issue(redis, prefix, dave.id)
    r1 = await confirm(site, f"/auth/link/{first}")
    old = r1.cookies[sessions.COOKIE].value
    second = await loginlink.issue(redis, prefix, dave.id)
    r2 = await confirm(site, f"/auth/link/{second}")
    assert r2.status == 303 and r2.cookies[sessions.COOKIE].value != old
    assert await site.session_count() == 1  # the old session ended


async def test_expired_link_refused(site: Site, cli_env: dict[str, str], pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await users.add_user(conn, "erin")
    url = await _link_via_cli(site, cli_env, "erin", "--minutes", "1")
    token = urlsplit(url).path.rsplit("/", 1)[1]
    client = site.app[appkeys.redis]
    key = loginlink.key(site.config.redis.key_prefix, token)
    record = json.loads(await client.get(key))
    ttl = await client.ttl(key)
    assert 60 < ttl <= 60 + loginlink.REMEMBER_SECONDS
    record["exp"] -= 61  # a minute later
    await client.set(key, json.dumps(record), keepttl=True)
    resp = await site.client.get(urlsplit(url).path, allow_redirects=False)
    assert resp.status == 410
    assert "expired" in await resp.text()
    assert sessions.COOKIE not in resp.cookies
    assert (await site.client.get("/keys", allow_redirects=False)).status == 302


async def test_unknown_link_refused_in_both_languages(site: Site) -> None:
    for path in ("/auth/link/" + "A" * 43, "/auth/link/short", "/auth/link/" + "%2e" * 10):
        resp = await site.client.get(path, allow_redirects=False)
        assert resp.status in (400, 404), path
        if resp.status == 400:
            assert "not valid" in await resp.text()
    zh = await site.client.get("/auth/link/" + "B" * 43, headers={"Accept-Language": "zh-CN"})
    assert zh.status == 400 and "登录链接无效" in await zh.text()


async def test_cli_refuses_unknown_user_and_bad_minutes(cli_env: dict[str, str], pool: asyncpg.Pool) -> None:
    r = sharekey("login-link", "nobody", env=cli_env)
    assert r.code == 1 and "no user named 'nobody'" in r.err
    async with pool.acquire() as conn:
        await users.add_user(conn, "frank")
    r = sharekey("login-link", "frank", "--minutes", "0", env=cli_env)
    assert r.code == 1 and "--minutes" in r.err


async def test_first_run_creates_admin_and_prints_a_link(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    capsys,
    site: Site,  # type: ignore[no-untyped-def]
) -> None:
    cfg = config.replace("server", public_url=site.config.server.public_url)
    await cli._prepare(cfg)
    out = capsys.readouterr().out
    assert "admin" in out
    [url] = [w for w in out.split() if w.startswith("http")]
    async with pool.acquire() as conn:
        admin = await users.get_by_username(conn, "admin")
    assert admin is not None and admin.is_admin
    resp = await confirm(site, urlsplit(url).path)
    assert resp.status == 303
    page = await site.client.get("/keys")
    assert page.status == 200 and ">admin</span>" in await page.text()

    # Not brand-new any more: no second admin, no link.
    await cli._prepare(cfg)
    assert "http" not in capsys.readouterr().out
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 1


async def _link(site: Site, pool: asyncpg.Pool, name: str) -> str:
    async with pool.acquire() as conn:
        user = await users.add_user(conn, name)
    token = await loginlink.issue(site.app[appkeys.redis], site.config.redis.key_prefix, user.id)
    return token


async def test_head_and_get_never_use_the_link_up(site: Site, pool: asyncpg.Pool) -> None:
    """Mail scanners and link previews fetch links (HEAD, GET): they sign nobody in and leave the
    link working for the person it was meant for."""
    token = await _link(site, pool, "gina")
    path = loginlink.PATH + token
    for _ in range(2):
        head = await site.client.head(path, allow_redirects=False)
        assert head.status == 200 and sessions.COOKIE not in head.cookies
        page = await site.client.get(path, allow_redirects=False)
        assert page.status == 200 and sessions.COOKIE not in page.cookies
        text = await page.text()
        assert "Sign in to this gateway as gina?" in text and f'action="{loginlink.FORM_PATH}"' in text
        # The page's URL is the link: it goes as a Referer to this site only (not "no-referrer",
        # under which browsers send `Origin: null` with the button's POST).
        assert page.headers["Referrer-Policy"] == "same-origin" and page.headers["Cache-Control"] == "no-store"
    assert await site.session_count() == 0
    assert (await site.client.get("/keys", allow_redirects=False)).status == 302
    resp = await confirm(site, path)
    assert resp.status == 303 and await site.session_count() == 1
    assert (await site.client.get(path, allow_redirects=False)).status == 410
    assert (await site.client.head(path, allow_redirects=False)).status == 410


async def test_confirmation_page_in_chinese_escapes_the_name(site: Site, pool: asyncpg.Pool) -> None:
    token = await _link(site, pool, "<b>hal</b>")
    page = await site.client.get(loginlink.PATH + token, headers={"Accept-Language": "zh-CN"})
    text = await page.text()
    assert page.status == 200 and "以 &lt;b&gt;hal&lt;/b&gt; 的身份登录本网关？" in text and "<b>hal" not in text
    assert ">登录</button>" in text


async def test_a_post_from_elsewhere_signs_nobody_in_and_leaves_the_link(
    site: Site, pool: asyncpg.Pool, aiohttp_client: Any
) -> None:
    """Login CSRF: another site's form (its Origin, or none), or a browser that never saw the
    page, cannot use a link to sign this browser in."""
    token = await _link(site, pool, "ivan")
    path = loginlink.PATH + token
    page = await site.client.get(path)
    fields = dict(HIDDEN.findall(await page.text()))
    cross = [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {},  # neither header: refused too
        {"Origin": "null"},
    ]
    for headers in cross:
        resp = await site.client.post(loginlink.FORM_PATH, data=fields, headers=headers, allow_redirects=False)
        assert resp.status == 403, headers
        assert sessions.COOKIE not in resp.cookies
    # Same origin, but without the cookie the page set (another browser), or a wrong value.
    same = {"Origin": site.origin, "Sec-Fetch-Site": "same-origin"}
    other = await aiohttp_client(site.client.server)
    resp = await other.post(loginlink.FORM_PATH, data=fields, headers=same, allow_redirects=False)
    assert resp.status == 403 and sessions.COOKIE not in resp.cookies
    wrong = {**fields, loginlink.CONFIRM_FIELD: "x" * 43}
    resp = await site.client.post(loginlink.FORM_PATH, data=wrong, headers=same, allow_redirects=False)
    assert resp.status == 403
    assert await site.session_count() == 0
    # None of that used the link up.
    assert (await confirm(site, path)).status == 303


async def test_the_token_is_never_logged_in_full(site: Site, pool: asyncpg.Pool) -> None:
    token = await _link(site, pool, "judy")
    with capture_logs() as logs:
        assert (await site.client.head(loginlink.PATH + token)).status == 200
        assert (await confirm(site, loginlink.PATH + token)).status == 303
        assert (await site.client.get(loginlink.PATH + token)).status == 410
    lines = [e for e in logs if e["event"] == "request"]
    assert [(e["method"], e["path"]) for e in lines] == [
        ("HEAD", f"/auth/link/{token[:4]}…"),
        ("GET", f"/auth/link/{token[:4]}…"),
        ("POST", "/auth/link"),
        ("GET", f"/auth/link/{token[:4]}…"),
    ]
    assert token not in str(logs) and token[4:20] not in str(logs)
