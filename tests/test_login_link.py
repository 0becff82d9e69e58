"""One-time sign-in links (`sharekey login-link`): the CLI prints a URL, it signs in once, and a
link used twice, expired or never issued is refused with a page saying why."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis

from gateway import appkeys
from gateway import config as config_mod
from gateway.ops import cli
from gateway.store import users
from gateway.web import loginlink, sessions

from . import fake_linuxdo
from .clirun import sharekey
from .fake_linuxdo import Site

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures


async def _link_via_cli(site: Site, cli_env: dict[str, str], name: str, *extra: str) -> str:
    env = {**cli_env, "SHAREKEY_SERVER_PUBLIC_URL": site.config.server.public_url}
    r = sharekey("login-link", name, *extra, env=env)
    assert r.code == 0, r.err
    assert r.out.count("\n") == 1, "stdout holds only the URL"
    return r.out.strip()


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

    resp = await site.client.get(parts.path, allow_redirects=False)
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
    r1 = await site.client.get(f"/auth/link/{first}", allow_redirects=False)
    old = r1.cookies[sessions.COOKIE].value
    second = await loginlink.issue(redis, prefix, dave.id)
    r2 = await site.client.get(f"/auth/link/{second}", allow_redirects=False)
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
    resp = await site.client.get(urlsplit(url).path, allow_redirects=False)
    assert resp.status == 303
    page = await site.client.get("/keys")
    assert page.status == 200 and ">admin</span>" in await page.text()

    # Not brand-new any more: no second admin, no link.
    await cli._prepare(cfg)
    assert "http" not in capsys.readouterr().out
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
