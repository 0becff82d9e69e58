"""Signing in from a real headless Chromium (as tests/browser/test_browser.py): through a one-time sign-in
link (its confirmation page, and the page refusing it the second time), through the fake OpenID
Connect provider from the sign-in page, and never leaving the site whatever `next=` says.
Skipped, saying why, only where Chromium or the playwright package is missing."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway import appkeys
from gateway.store import users
from gateway.web.signin import loginlink
from tests.browser import test_browser
from tests.browser.test_browser import shot
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.web import test_providers
from tests.web.test_providers import Gw

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
browser, page, pytestmark = test_browser.browser, test_browser.page, test_browser.pytestmark
oidc, github, make = test_providers.oidc, test_providers.github, test_providers.make


async def test_sign_in_through_a_link(page: Any, site: Site, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        carol = await users.add_user(conn, "carol")
    token = await loginlink.issue(site.app[appkeys.redis], site.config.redis.key_prefix, carol.id)
    url = loginlink.url(site.config.server.public_url, token)
    await page.goto(url)
    assert page.url == url  # a page that asks first: opening the link signs nobody in
    assert await page.get_by_text("Sign in to this gateway as carol?").count() == 1
    await shot(page, "signin-link-confirm.png")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(site.config.server.public_url + "/keys")
    assert await page.locator("header").get_by_text("carol").count() == 1
    await shot(page, "signin-link.png")
    response = await page.goto(url)
    assert response is not None and response.status == 410
    assert "already been used" in await page.content()


async def test_sign_in_through_oidc_from_the_sign_in_page(page: Any, make: Any) -> None:
    gw: Gw = await make()
    base = gw.config.server.public_url
    await page.goto(base + "/keys")
    assert page.url.startswith(base + "/auth/login")
    await page.get_by_role("link", name="Sign in with corp").click()
    await page.wait_for_url(base + "/keys")
    assert await page.locator("header").get_by_text("olga").count() == 1
    await shot(page, "signin-oidc.png")


def _elsewhere(site: Site) -> str:
    """`next=` values that old checks let through and browsers read as another origin (the fake
    provider's, a server that would answer): a TAB, a newline, a backslash."""
    host = site.provider.url("").removeprefix("http://").rstrip("/")
    return host + "/user_avatar/elsewhere"


async def test_language_switch_never_leaves_the_site(page: Any, site: Site) -> None:
    site.provider.sign_in_as("alice")
    for trick in ("/%09/", "/%0A/", "/%0D%0A/", "/%5C", "%09//", "/%0B/", "/%2F/"):
        response = await page.goto(f"{site.origin}/lang/en?next={trick}{_elsewhere(site)}")
        assert response is not None and response.status < 500, trick
        # /keys, which sends a browser that is not signed in through the fake Linux.do and back
        assert page.url == site.origin + "/keys", (trick, page.url)


async def test_sign_in_with_a_foreign_next_ends_here(page: Any, site: Site) -> None:
    for trick in ("/%09/", "/%5C", "/%0B/"):
        site.provider.sign_in_as("alice")
        await page.goto(f"{site.origin}/auth/linuxdo/login?next={trick}{_elsewhere(site)}")
        assert page.url == site.origin + "/keys", (trick, page.url)
        assert await page.locator("header").get_by_text("alice").count() == 1, trick
        cookies = await page.context.cookies(site.origin)
        assert [c["name"] for c in cookies if c["name"].endswith("sharekey_session")], trick
        await page.context.clear_cookies()
