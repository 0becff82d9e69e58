"""The thanks pages in a real headless Chromium (as tests/browser/test_browser.py): the SVG charts render,
the numbers follow new /v1 traffic without a reload, the XSS name stays text, the page works
without JavaScript. Screenshots in both languages go to tests/artifacts/.

Skipped, saying why, only where Chromium or the playwright package is missing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.relay.usage import USAGE
from gateway.web.board import thanks
from gateway.web.board.cache import BOARD
from tests.browser.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, sign_in
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import user_with_token
from tests.web.test_thanks_pages import XSS, board_site, seed_board

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None

pytestmark = [
    pytest.mark.skipif(
        async_playwright is None, reason="the playwright package is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    ),
]

provider = fake_linuxdo.provider  # fixtures
_ = board_site


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


async def open_page(browser: Browser, errors: list[str], **options: Any) -> Page:
    options = {"locale": "en-US", "viewport": {"width": 1200, "height": 900}, **options}
    context = await browser.new_context(**options)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # the XSS name must not open one
    return page


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def chat(site: Site, token: str, n: int) -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(n):
        resp = await site.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        await resp.read()


async def test_the_board_in_the_browser_is_live(
    board_site: Site, fake_upstream: FakeUpstream, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(thanks, "POLL_SECONDS", 0.5)
    board_site.app[BOARD].ttl = 0.3
    await seed_board(board_site, fake_upstream)
    _, token = await user_with_token(board_site.pool, "caller")
    errors: list[str] = []
    page = await open_page(browser, errors)
    origin = board_site.origin

    await page.goto(origin + "/")
    await expect(page.locator("h1")).to_have_text("5 donors, 6 keys, serving the community")
    await expect(page.locator("[data-live-note]")).to_be_visible()
    for chart in ("svg.chart.bars", "svg.chart.capacity"):
        await expect(page.locator(chart)).to_be_visible()
        assert (await page.locator(chart).bounding_box() or {}).get("height", 0) > 50
    assert await page.locator("svg.chart.bars rect.bar").count() == 30
    calls_today = page.locator('[data-total="calls_today"]')
    await expect(calls_today).to_have_text("329")
    await expect(page.locator(".top-list li")).to_have_count(5)
    await expect(page.locator(".top-list")).to_contain_text(XSS)  # as text
    await expect(page.locator(".top-list img[src*='evil']")).to_have_count(0)
    avatars = page.locator(".top-list img.avatar")
    for i in range(await avatars.count()):
        assert await avatars.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
    await shot(page, "home-en.png")

    # New traffic through /v1: the numbers and "now serving" follow without a reload.
    await chat(board_site, token, 3)
    await expect(calls_today).to_have_text("332", timeout=15_000)
    await expect(page.locator("[data-now-serving]")).to_contain_text(
        re.compile(r"Linus T\.|An anonymous donor"), timeout=15_000
    )
    assert page.url == origin + "/"

    await page.get_by_role("link", name="See the full board").click()
    await page.wait_for_url(origin + "/thanks")
    rows = page.locator("table.board tbody tr")
    await expect(rows).to_have_count(5)
    await expect(page.locator("table.board svg.chart.spark")).to_have_count(5)
    await expect(rows.first).to_contain_text("Linus T.")
    await expect(page.locator("table.board")).to_contain_text("Anonymous donor")
    await page.get_by_role("link", name="Last 7 days").click()
    await page.wait_for_url(origin + "/thanks?period=7d")
    await expect(page.locator('.periods a[aria-current="page"]')).to_have_text("Last 7 days")
    await shot(page, "thanks-en.png")

    first_calls = rows.first.locator('[data-field="calls"]')
    before = int((await first_calls.inner_text()).replace(",", ""))
    await chat(board_site, token, 2)  # Linus' deepseek key again: his 7-day count grows in the table
    await expect(page.locator('[data-total="calls_today"]')).to_have_text("334", timeout=15_000)
    await expect(first_calls).to_have_text(f"{before + 2:,}", timeout=15_000)

    await page.get_by_role("link", name="中文").click()
    await page.wait_for_url(origin + "/thanks")
    await expect(page.locator("h1")).to_have_text("感谢榜")
    await expect(page.locator("table.board")).to_contain_text("匿名捐赠者")
    await shot(page, "thanks-zh.png")
    await page.goto(origin + "/")
    await expect(page.locator("h1")).to_have_text("5 位捐赠者，6 个密钥，为社区服务")
    await expect(page.locator("#now-title")).to_have_text("正在服务")
    await shot(page, "home-zh.png")

    assert errors == [], errors
    await page.context.close()


async def test_the_board_without_javascript_is_a_complete_page(
    board_site: Site, fake_upstream: FakeUpstream, browser: Browser
) -> None:
    await seed_board(board_site, fake_upstream)
    errors: list[str] = []
    options = {"java_script_enabled": False, "viewport": {"width": 420, "height": 900}, "color_scheme": "dark"}
    page = await open_page(browser, errors, **options)
    await page.goto(board_site.origin + "/thanks?period=all")
    await expect(page.locator("table.board tbody tr")).to_have_count(5)
    await expect(page.locator("svg.chart.bars")).to_be_visible()
    await expect(page.locator("[data-live-note]")).to_be_hidden()
    await page.get_by_role("link", name="Today", exact=True).click()  # the period switch is plain links
    await page.wait_for_url(board_site.origin + "/thanks?period=today")
    await page.goto(board_site.origin + "/")
    await expect(page.locator("svg.chart.capacity")).to_be_visible()
    await shot(page, "home-mobile-dark-nojs.png")
    assert errors == [], errors
    assert board_site.app[USAGE].depth == 0
    await page.context.close()


async def test_a_donor_chooses_anonymity_on_the_keys_page(
    board_site: Site, fake_upstream: FakeUpstream, browser: Browser
) -> None:
    errors: list[str] = []
    page = await open_page(browser, errors)
    await sign_in(page, board_site, "/keys")
    section = page.locator("#on-board")
    await expect(section).to_contain_text("Your calls are credited to: Alice Example")
    await section.get_by_role("button", name="Appear anonymously").click()
    await expect(section).to_contain_text("credited to “Anonymous donor”")
    await expect(section.locator("[data-result]")).to_have_text("Saved.")
    async with board_site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT anonymous FROM users WHERE username = 'alice'") is True
    await section.get_by_role("button", name="Show my name").click()
    await expect(section).to_contain_text("Your calls are credited to: Alice Example")
    assert errors == [], errors
    await page.context.close()
