"""The thanks pages, `/` and `/thanks`: what they show, escaping, avatars, anonymity, languages,
the period switch without JavaScript, and the anonymous toggle on `/keys`.

`board_site` is the accounts tests' site (fake Linux DO Connect, fixed port) with the board wired
in; `seed_board` gives it a month of history. Both are shared with the browser tests.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import config as config_mod
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.picks import Candidate, UserLimits
from gateway.store import users
from gateway.web.board.cache import BOARD
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import ENGLISH, FakeLinuxDo, Site
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token
from tests.web.test_board import board_app, board_config, credit

provider = fake_linuxdo.provider  # fixture

XSS = "<img src=x onerror=alert(1)>"
DONOR_KEY = "sk-board-DONOR-secret-5150"


@pytest.fixture
async def board_site(config: config_mod.Config, pool: asyncpg.Pool, provider: FakeLinuxDo, aiohttp_client: Any) -> Site:
    port = fake_linuxdo.free_port()
    cfg = fake_linuxdo.site_config(board_config(config), provider, port)
    app = board_app(cfg)
    client = await aiohttp_client(TestServer(app, host="127.0.0.1", port=port), headers=ENGLISH)
    return Site(client, app, cfg, pool, provider)


async def seed_board(site: Site, upstream: FakeUpstream) -> dict[str, Any]:
    """Five donors with a month of history: avatars from the provider, one anonymous, one whose
    display name is an XSS attempt, one whose avatar points elsewhere. Every key serves from the
    fake upstream (so /v1 traffic works), with limits and models that make a readable chart."""
    app, avatar = site.app, site.provider.url("/user_avatar/linux.do")
    today = date_today(site)
    linus_keys = [(["gpt-4o-mini", "gpt-4o"], 400), (["deepseek-chat"], 300)]
    donors = [
        # username, display name, avatar, anonymous, [(models, limit)], calls per day (30 values)
        ("linus", "Linus T.", f"{avatar}/linus/96/1.png", False, linus_keys,
         [40 + (i * 37) % 60 + i * 4 for i in range(30)]),
        ("mei", "梅子", f"{avatar}/mei/96/1.png", False, [(["gpt-4o-mini"], 200)],
         [0] * 8 + [30 + (i * 17) % 40 for i in range(22)]),
        ("quiet", "Quiet Person", f"{avatar}/quiet/96/1.png", True, [(["deepseek-chat", "gpt-4o"], 150)],
         [20 + (i * 11) % 25 for i in range(30)]),
        ("mallory", XSS, "https://evil.example/avatar.png", False, [(["claude-3-5-sonnet"], 100)],
         [0] * 20 + [5 + i for i in range(10)]),
        ("sam", None, f"{avatar}/sam/96/1.png", False, [(["gpt-4o-mini"], 80)],
         [12] * 15 + [0] * 15),
    ]  # fmt: skip
    upstream.models.extend(m for _, _, _, _, specs, _ in donors for models, _ in specs for m in models)
    keys: dict[str, list[Any]] = {}
    async with site.pool.acquire() as conn:
        for username, display, avatar_url, anonymous, _, _ in donors:
            user = await users.add_user(conn, username, avatar_url=avatar_url)
            await conn.execute(
                "UPDATE users SET display_name = $2, anonymous = $3 WHERE id = $1",
                uuid.UUID(user.id), display, anonymous,
            )  # fmt: skip
    for username, _, _, _, key_specs, history in donors:
        async with site.pool.acquire() as conn:
            user = await users.get_by_username(conn, username)
        assert user is not None
        keys[username] = [
            await add_key(
                site.pool,
                site.config,
                user,
                upstream.base_url,
                name=f"{username}-{i}",
                api_key=f"{DONOR_KEY}-{username}-{i}",  # the same key is never stored twice
                models=models,
                daily_limit=limit,
            )  # fmt: skip
            for i, (models, limit) in enumerate(key_specs)
        ]
        for days_ago, calls in enumerate(reversed(history)):
            if calls:
                await credit(app, keys[username][0], today - timedelta(days=days_ago), calls, tokens=850)
    await app[KEY_INDEX].reload()
    # Some of today's capacity in use (the balancer's counts), so the capacity chart has something to say.
    balancer = app[BALANCER]
    for username, used in (("linus", 160), ("mei", 90), ("quiet", 40), ("mallory", 100)):
        key = keys[username][0]
        for _ in range(used):
            await balancer.pick([Candidate(key.id, key.daily_limit)], user_id="seed", limits=UserLimits(0, 0, 0),
                                request_id=uuid.uuid4().hex, stream=False)  # fmt: skip
    await app[BOARD].refresh()
    return {"keys": keys, "today": today}


def date_today(site: Site) -> Any:
    from datetime import date

    return date.fromisoformat(site.app[BALANCER].today())


async def text(site: Site, path: str, **headers: str) -> str:
    resp = await site.client.get(path, headers=headers)
    assert resp.status == 200, (path, resp.status)
    return await resp.text()


async def test_home_shows_who_serves_the_top_and_the_pool(board_site: Site, fake_upstream: FakeUpstream) -> None:
    seeded = await seed_board(board_site, fake_upstream)
    linus_key = seeded["keys"]["linus"][0]
    await credit(board_site.app, linus_key, seeded["today"], 1)  # the latest call: Linus'
    await board_site.app[BOARD].refresh()
    html = await text(board_site, "/")
    assert '<strong class="donor-name">Linus T.</strong> served the latest request. Thank you!' in html
    top = re.findall(r'<span class="top-name">(.*?)</span>\s*<span class="top-calls"><strong>([\d,]+)</strong>', html)
    assert top == [
        ("Linus T.", "210"),
        ("梅子", "67"),
        ('<span class="anon">Anonymous donor</span>', "39"),
        ("&lt;img src=x onerror=alert(1)&gt;", "14"),
        ("sam", "0"),
    ]
    assert html.count('<svg class="chart bars"') == 1 and html.count('<svg class="chart capacity"') == 1
    # 40 picks in Redis, plus the 39 calls credited in PostgreSQL today that seeded the day's counts.
    assert re.search(r"<title>deepseek-chat: 79 used today, 371 left of 450</title>", html)
    assert '<span class="badge badge-active">Active 6</span>' in html
    assert 'href="/thanks"' in html
    assert 'data-board-api="/api/shared-keys/thanks-board?period=today&amp;limit=5"' in html


async def test_thanks_board_with_the_period_switch(board_site: Site, fake_upstream: FakeUpstream) -> None:
    await seed_board(board_site, fake_upstream)
    for period, first in (("today", "Linus T."), ("7d", "Linus T."), ("all", "Linus T.")):
        html = await text(board_site, f"/thanks?period={period}")
        assert f'<a href="/thanks?period={period}" aria-current="page">' in html
        assert html.count('aria-current="page"') == 2  # the period, and "Thanks board" in the nav
        rows = re.findall(r'<tr class="rank-(\d+)" data-rank="\d+">', html)
        assert rows and rows[0] == "1"
        assert re.search(r'data-rank="1">.*?<span class="donor-name">' + re.escape(first), html, re.S)
        assert html.count('<svg class="chart spark"') == len(rows)
    today = await text(board_site, "/thanks")
    assert len(re.findall(r'<tr class="rank-\d+"', today)) == 5
    sams = await text(board_site, "/thanks?period=7d")
    # Sam served nothing in the last 15 days but has a key: listed, with 0 calls.
    assert re.search(r'<span class="donor-name">sam</span>.*?data-field="calls">0<', sams, re.S)
    bad = await board_site.client.get("/thanks?period=week")
    assert bad.status == 422 and "The period must be today, 7d, 30d or all." in await bad.text()


async def test_donor_text_is_escaped_and_avatars_come_from_the_provider(
    board_site: Site, fake_upstream: FakeUpstream
) -> None:
    await seed_board(board_site, fake_upstream)
    for path in ("/", "/thanks", "/thanks?period=all"):
        html = await text(board_site, path)
        assert XSS not in html and "onerror=alert(1)" not in html.replace("onerror=alert(1)&gt;", ""), path
        srcs = re.findall(r'<img class="avatar[^"]*" src="([^"]+)"', html)
        assert srcs, path
        for src in srcs:
            assert src.startswith(board_site.provider.url("/user_avatar/")) or src.startswith("/static/avatar.svg"), src
        assert "evil.example" not in html
        # Nothing reveals a key, its base URL or the upstream's address.
        assert DONOR_KEY not in html and fake_upstream.base_url not in html
        assert str(fake_upstream.server.port) not in html  # type: ignore[union-attr]
    html = await text(board_site, "/thanks?period=all")
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    body = await (await board_site.client.get("/api/shared-keys/thanks-board?period=all")).json()
    mallory = next(d for d in body["donors"] if d["username"] == "mallory")
    assert mallory["display_name"] == XSS and mallory["avatar_url"] is None
    linus = next(d for d in body["donors"] if d["username"] == "linus")
    assert linus["avatar_url"] == board_site.provider.url("/user_avatar/linux.do/linus/96/1.png")
    quiet = [d for d in body["donors"] if d["anonymous"]]
    assert len(quiet) == 1 and quiet[0]["username"] is None and quiet[0]["calls"] > 0
    raw = await (await board_site.client.get("/api/shared-keys/thanks-board?period=all")).text()
    assert "quiet" not in raw.lower() and DONOR_KEY not in raw and "base_url" not in raw


async def test_pages_in_both_languages_with_security_headers(board_site: Site, fake_upstream: FakeUpstream) -> None:
    await seed_board(board_site, fake_upstream)
    zh = await text(board_site, "/", **{"Accept-Language": "zh-CN"})
    assert '<html lang="zh-CN">' in zh and "正在服务" in zh and "今日贡献" in zh and "匿名捐赠者" in zh
    assert "Now serving" not in zh
    zh_board = await text(board_site, "/thanks?period=30d", **{"Accept-Language": "zh-CN"})
    assert "感谢榜" in zh_board and "近 30 天" in zh_board and "今日占比" in zh_board
    resp = await board_site.client.get("/")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    html = await resp.text()
    assert "<script>" not in html and " style=" not in html  # the CSP allows neither
    assert not re.search(r'(src|href)="(https?:)?//(?!127\.0\.0\.1)', html)


async def test_an_empty_pool_still_has_a_home(board_site: Site) -> None:
    html = await text(board_site, "/")
    assert "No request has been served yet." in html and "No model is being served right now." in html
    assert "Nobody has served a call in this period yet." in await text(board_site, "/thanks")


async def test_a_signed_in_visitor_sees_their_header_and_sets_anonymity_from_keys(
    board_site: Site, fake_upstream: FakeUpstream
) -> None:
    assert (await board_site.sign_in("alice")).status == 303
    html = await text(board_site, "/")
    assert '<span class="username" title="Alice Example">alice</span>' in html
    keys_page = await text(board_site, "/keys")
    assert "Your calls are credited to: Alice Example" in keys_page
    assert 'data-action="anonymous" data-anonymous="true">Appear anonymously</button>' in keys_page

    refused = await board_site.client.put("/api/me", json={"anonymous": True})  # no CSRF token
    assert refused.status == 403
    headers = await board_site.write_headers("/keys")
    resp = await board_site.client.put("/api/me", json={"anonymous": True}, headers=headers)
    assert resp.status == 200 and (await resp.json())["anonymous"] is True
    keys_page = await text(board_site, "/keys")
    assert "Your calls are credited to “Anonymous donor”" in keys_page
    assert 'data-anonymous="false">Show my name</button>' in keys_page

    async with board_site.pool.acquire() as conn:
        alice = await users.get_by_username(conn, "alice")
    assert alice is not None and alice.anonymous
    key = await add_key(board_site.pool, board_site.config, alice, fake_upstream.base_url)
    await credit(board_site.app, key, date_today(board_site), 2)
    await board_site.app[BOARD].refresh()
    home = await text(board_site, "/")
    assert "An anonymous donor served the latest request." in home
    assert "Alice Example" not in home.split("</header>", 1)[1]  # only in the visitor's own header


async def test_the_visitor_cache_spares_the_database(board_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await board_site.sign_in("alice")).status == 303
    await text(board_site, "/")
    lookups = 0
    real = users.get_by_id

    async def counting(conn: asyncpg.Connection, user_id: str) -> users.User | None:
        nonlocal lookups
        lookups += 1
        return await real(conn, user_id)

    monkeypatch.setattr(users, "get_by_id", counting)
    for _ in range(20):
        await text(board_site, "/thanks")
    assert lookups == 0
    await user_with_token(board_site.pool, "bob")
