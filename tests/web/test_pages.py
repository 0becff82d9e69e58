"""The /keys and /tokens pages: sign-in required, the same data as the API, escaping, languages."""

from __future__ import annotations

import re
import string
from pathlib import Path

from gateway.app import TEMPLATES_DIR
from gateway.store import users
from gateway.web import frame, i18n
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures

DONOR_KEY = "sk-donor-PAGE-secret-778899"


async def alice(site: Site) -> None:
    assert (await site.sign_in("alice")).status == 303


async def test_pages_need_a_session(site: Site) -> None:
    for path in ("/keys", "/tokens"):
        resp = await site.client.get(path, allow_redirects=False)
        assert resp.status == 302
        assert resp.headers["Location"] == f"/auth/linuxdo/login?next={path}"


async def test_keys_page_lists_own_keys_masked_and_escaped(site: Site, fake_upstream: FakeUpstream) -> None:
    await alice(site)
    async with site.pool.acquire() as conn:
        me = await users.get_by_username(conn, "alice")
    assert me is not None
    evil = '<img src=x onerror="alert(1)">'
    await add_key(site.pool, site.config, me, fake_upstream.base_url, name=evil, api_key=DONOR_KEY)
    bob, _ = await user_with_token(site.pool, "bob")
    await add_key(site.pool, site.config, bob, fake_upstream.base_url, name="bobs-key")

    resp = await site.client.get("/keys")
    assert resp.status == 200
    html = await resp.text()
    assert DONOR_KEY not in html and DONOR_KEY[3:-4] not in html
    assert "<code>sk-…8899</code>" in html  # only the mask
    assert evil not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "bobs-key" not in html
    assert "gpt-4o-mini" in html and "Active" in html
    assert re.search(r'<meta name="csrf-token" content="[A-Za-z0-9_-]{43}">', html)


async def test_security_headers(site: Site) -> None:
    await alice(site)
    resp = await site.client.get("/keys")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert site.config.oauth_linuxdo.avatar_base_url in csp  # avatars from the provider only
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"
    html = await resp.text()
    assert "<script>" not in html  # no inline script: CSP allows only our files
    assert not re.search(r'(src|href)="(https?:)?//(?!127\.0\.0\.1)', html)  # no third-party asset


async def test_static_files_are_served(site: Site) -> None:
    for name, kind in (("app.css", "text/css"), ("app.js", "javascript"), ("keys.js", "javascript"),
                       ("tokens.js", "javascript"), ("avatar.svg", "image/svg+xml")):  # fmt: skip
        resp = await site.client.get(frame.asset(name))
        assert resp.status == 200, name
        assert kind in resp.headers["Content-Type"]


# --- languages ------------------------------------------------------------------------------------


async def test_language_from_accept_language_cookie_and_switch(site: Site) -> None:
    await alice(site)
    zh = await (await site.client.get("/keys", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})).text()
    assert '<html lang="zh-CN">' in zh and "我的密钥" in zh and "添加密钥" in zh
    en = await (await site.client.get("/keys", headers={"Accept-Language": "en-GB,en;q=0.9"})).text()
    assert '<html lang="en">' in en and "My keys" in en and "我的密钥" not in en
    default = await (await site.client.get("/tokens", headers={"Accept-Language": "fr"})).text()
    assert '<html lang="zh-CN">' in default

    switch = await site.client.get("/lang/zh-CN", params={"next": "/tokens"}, allow_redirects=False)
    assert (switch.status, switch.headers["Location"]) == (303, "/tokens")
    assert switch.cookies["lang"].value == "zh-CN"
    chosen = await (await site.client.get("/tokens", headers={"Accept-Language": "en"})).text()
    assert '<html lang="zh-CN">' in chosen and "网关令牌" in chosen  # the switch beats the header

    away = await site.client.get("/lang/en", params={"next": "//evil.example"}, allow_redirects=False)
    assert away.headers["Location"] == "/keys"
    assert (await site.client.get("/lang/fr", allow_redirects=False)).status == 404


def test_accept_language_parsing() -> None:
    assert i18n.from_accept_language("") == "zh-CN"
    assert i18n.from_accept_language("en-US,en;q=0.9") == "en"
    assert i18n.from_accept_language("de, en;q=0.5, zh-TW;q=0.8") == "zh-CN"
    assert i18n.from_accept_language("zh;q=0.1, en;q=0.2") == "en"
    assert i18n.from_accept_language("en;q=bogus, zh") == "zh-CN"


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_the_catalogue_is_complete_in_both_languages() -> None:
    for key, texts in i18n.MESSAGES.items():
        assert set(texts) == set(i18n.LANGUAGES), key
        assert _fields(texts["zh-CN"]) == _fields(texts["en"]), key
        assert all(t.strip() for t in texts.values()), key
    # Every quoted "namespace.name" in the templates whose namespace the catalogue has is a key.
    namespaces = {key.split(".")[0] for key in i18n.MESSAGES}
    used = set()
    for path in Path(TEMPLATES_DIR).glob("*.html"):
        literals = re.findall(r"""["']([a-z_]+(?:\.[a-z_]+)+)["']""", path.read_text())
        used |= {lit for lit in literals if lit.split(".")[0] in namespaces and not lit.endswith((".js", ".css"))}
    assert {"field.api_key.keep", "keys.intro", "tokens.button.revoke"} <= used
    used |= {f"status.{s}" for s in ("active", "paused", "cooling", "disabled")}
    used |= {f"login.{r}" for r in ("inactive", "silenced", "trust_level")}
    missing = used - set(i18n.MESSAGES)
    assert not missing
    scripts = "".join(p.read_text() for p in frame.STATIC_DIR.glob("*.js"))
    for name in set(re.findall(r"""\bmsg\("(\w+)\"""", scripts)):
        assert f"js.{name}" in i18n.MESSAGES, name


# --- the keys API from a browser session ----------------------------------------------------------


async def test_another_users_key_answers_404_through_the_pages_as_through_the_api(
    site: Site, fake_upstream: FakeUpstream
) -> None:
    await alice(site)
    bob, bobs_token = await user_with_token(site.pool, "bob")
    bobs_key = await add_key(site.pool, site.config, bob, fake_upstream.base_url, name="bobs-key")
    headers = await site.write_headers("/keys")
    by_cookie = [
        await site.client.put("/api/shared-keys", json={"id": bobs_key.id, "is_active": False}, headers=headers),
        await site.client.delete("/api/shared-keys", params={"id": bobs_key.id}, headers=headers),
        await site.client.get("/api/shared-keys", params={"id": bobs_key.id}),
    ]
    for resp in by_cookie:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    _, carols_token = await user_with_token(site.pool, "carol")
    by_token = await site.client.delete(
        "/api/shared-keys", params={"id": bobs_key.id}, headers={"Authorization": f"Bearer {carols_token}"}
    )
    assert by_token.status == 404
    mine = await site.client.get("/api/shared-keys", headers={"Authorization": f"Bearer {bobs_token}"})
    assert [k["name"] for k in (await mine.json())["keys"]] == ["bobs-key"]  # untouched


async def test_cookie_key_writes_are_csrf_checked_bearer_ones_are_not(site: Site, fake_upstream: FakeUpstream) -> None:
    await alice(site)
    body = {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY}
    cross = await site.client.post(
        "/api/shared-keys/test", json=body, headers={"Origin": "https://evil.example", "X-CSRF-Token": "x"}
    )
    assert cross.status == 403
    _, token = await user_with_token(site.pool, "bob")
    bearer = await site.client.post(
        "/api/shared-keys/test",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
    )
    assert bearer.status == 200 and (await bearer.json())["ok"] is True


async def test_a_key_added_from_the_session_is_listed_on_the_page(site: Site, fake_upstream: FakeUpstream) -> None:
    await alice(site)
    headers = await site.write_headers("/keys")
    new = {
        "name": "my key",
        "base_url": fake_upstream.base_url,
        "api_key": DONOR_KEY,
        "available_models": ["gpt-4o-mini"],
        "daily_limit": 40,
        "description": "shared with <3",
        "tags": ["fast", "<b>"],
    }
    added = await site.client.post("/api/shared-keys", json=new, headers=headers)
    assert added.status == 201, await added.text()
    missing_field = await site.client.post("/api/shared-keys", json={**new, "name": ""}, headers=headers)
    assert missing_field.status == 422 and (await missing_field.json())["error"]["field"] == "name"
    html = await (await site.client.get("/keys")).text()
    assert "my key" in html and "shared with &lt;3" in html and "#&lt;b&gt;" in html and DONOR_KEY not in html
    assert "Your keys (1)" in html and "/ 40" in html


# Where browsers would go from a Location (WHATWG URL parsing: tabs and newlines dropped anywhere,
# leading controls and spaces trimmed, a backslash read as a slash): none of these stays here.
FOREIGN_NEXT = [
    "//evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    " //evil.example",
    "/\x0b/x",
    "/\x00/x",
    "/\x7f/x",
    "/\\evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "evil.example",
    "/%2F/evil.example",
    "/%5Cevil.example",
    "/%09/evil.example",
    "/%0B/x",
    "/\u3000/evil.example",  # an ideographic space, not ASCII
    "/keys\u2028",
    "",
    None,
]


def test_local_path_refuses_anything_a_browser_could_leave_this_site_for() -> None:
    for value in FOREIGN_NEXT:
        assert frame.local_path(value) == frame.DEFAULT_NEXT, repr(value)


def test_local_path_keeps_our_own_paths() -> None:
    for value in ("/keys", "/tokens", "/thanks?day=2024-01-02", "/keys?after=abc%3D", "/", "/a/b:c"):
        assert frame.local_path(value) == value


async def test_language_switch_with_control_characters_stays_here(site: Site) -> None:
    for nxt in ("/\t/evil.example", "/\x0b/x", "/\x00/x", "/%2F/evil.example"):
        resp = await site.client.get("/lang/en", params={"next": nxt}, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/keys"), repr(nxt)
        assert resp.cookies["lang"].value == "en"


async def test_sign_in_with_a_control_character_in_next_keeps_the_session(site: Site) -> None:
    site.provider.sign_in_as("alice")
    start = await site.client.get("/auth/linuxdo/login", params={"next": "/\x0b/x"}, allow_redirects=False)
    assert start.status == 302
    back = await fake_linuxdo.follow_provider(start.headers["Location"])
    done = await site.client.get(back, allow_redirects=False)
    assert (done.status, done.headers["Location"]) == (303, "/keys")
    assert "sharekey_session" in done.cookies
    assert (await site.client.get("/keys", allow_redirects=False)).status == 200
