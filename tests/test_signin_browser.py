"""Signing in from a real headless Chromium (as tests/test_browser.py): through a one-time sign-in
link (and the page refusing it the second time), and through the fake OpenID Connect provider from
the sign-in page. Skipped, saying why, only where Chromium or the playwright package is missing."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway import appkeys
from gateway.store import users
from gateway.web import loginlink

from . import fake_linuxdo, test_browser, test_providers
from .fake_linuxdo import Site
from .test_browser import shot
from .test_providers import Gw

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
browser, page, pytestmark = test_browser.browser, test_browser.page, test_browser.pytestmark
oidc, github, make = test_providers.oidc, test_providers.github, test_providers.make


async def test_sign_in_through_a_link(page: Any, site: Site, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        carol = await users.add_user(conn, "carol")
    token = await loginlink.issue(site.app[appkeys.redis], site.config.redis.key_prefix, carol.id)
    url = loginlink.url(site.config.server.public_url, token)
    await page.goto(url)
    assert page.url == site.config.server.public_url + "/keys"
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
