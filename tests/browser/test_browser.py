"""The pages in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python package):
sign in through the fake Linux DO Connect, donate a key against the fake upstream, test, edit,
pause and delete it, create and revoke a token. Screenshots go to tests/artifacts/.

Skipped, saying why, only where Chromium or the playwright package is missing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream

try:
    from playwright.async_api import Browser, Locator, Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts/
DONOR_KEY = "sk-browser-donor-key-424242"

pytestmark = [
    pytest.mark.skipif(
        async_playwright is None, reason="the playwright package is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    ),
]

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(locale="en-US", viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Failed loads are expected (a 401 after sign-out); a refused script, style or image is not.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Refused" in m.text else None)
    page.on("dialog", lambda dialog: dialog.accept())  # "delete?", "revoke?": yes
    yield page
    await context.close()
    assert errors == [], errors  # no script errors, no Content-Security-Policy violations


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def sign_in(page: Page, site: Site, path: str) -> None:
    site.provider.sign_in_as("alice")
    await page.goto(site.origin + path)  # -> sign-in -> the provider -> callback -> back here
    await page.wait_for_url(site.origin + path)
    await expect(page.locator(".who .username")).to_have_text("alice")
    avatar = page.locator(".who img.avatar")
    assert await avatar.evaluate("img => img.complete && img.naturalWidth > 0")
    assert site.provider.url("/user_avatar/") in (await avatar.get_attribute("src") or "")


async def fill_key(form: Locator, name: str, base_url: str, models: str) -> None:
    """The add form's required fields, the donor key `DONOR_KEY`."""
    await form.get_by_label("Name").fill(name)
    await form.get_by_label("Base URL").fill(base_url)
    await form.get_by_label("API key").fill(DONOR_KEY)
    await form.get_by_label("Models").fill(models)


async def test_donate_a_key_in_the_browser(site: Site, page: Page, fake_upstream: FakeUpstream) -> None:
    await sign_in(page, site, "/keys")
    form = page.locator("#add-key")
    await fill_key(form, "Fake upstream", fake_upstream.base_url, "gpt-4o-mini, text-embedding-3-small")
    await form.get_by_label("Daily limit").fill("100")
    await form.get_by_label("Description").fill("A <fast> test key")
    await form.get_by_label("Tags").fill("fast, test")

    await form.get_by_role("button", name="Test").click()
    await expect(form.locator("[data-result]")).to_contain_text(re.compile(r"Test passed · \d+ ms"))
    await form.get_by_role("button", name="Add key").click()

    item = page.locator("#key-list [data-key-id]", has_text="Fake upstream")
    await expect(item).to_have_count(1)
    await expect(item.locator("[data-test-result]")).to_contain_text("Test passed")
    await expect(item.locator(".badge")).to_have_text("Active")
    await expect(item).to_contain_text("A <fast> test key")
    await expect(item).to_contain_text("sk-…4242")
    assert DONOR_KEY not in await page.content()
    await expect(form.get_by_label("Name")).to_have_value("")  # the form was reset
    await shot(page, "keys-en.png")

    # The API's 422 names the field; the page shows it next to that field.
    await fill_key(form, "Fake upstream", fake_upstream.base_url, "gpt-4o-mini")
    await form.get_by_role("button", name="Add key").click()
    await expect(form.locator('[data-error-for="name"]')).to_contain_text("already have a key")
    await expect(form.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    await form.get_by_label("Name").fill("")

    # Edit: the daily limit.
    await item.locator("details.edit > summary").click()
    await item.locator('input[name="daily_limit"]').fill("120")
    await item.get_by_role("button", name="Save").click()
    await expect(item.locator(".usage")).to_contain_text("/ 120")

    await item.get_by_role("button", name="Pause").click()
    await expect(item.locator(".badge")).to_have_text("Paused")
    await expect(item.get_by_role("button", name="Resume")).to_be_visible()
    async with site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT is_active FROM shared_keys WHERE name = 'Fake upstream'") is False

    await page.get_by_role("link", name="中文").click()
    await expect(page.locator("h1")).to_have_text("我的密钥")
    await expect(item.locator(".badge")).to_have_text("已暂停")
    await shot(page, "keys-zh.png")

    await item.get_by_role("button", name="恢复").click()
    await expect(item.locator(".badge")).to_have_text("使用中")
    await item.get_by_role("button", name="删除").click()
    await expect(page.locator("#key-list .empty")).to_be_visible()
    async with site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shared_keys") == 0


async def test_tokens_in_the_browser(site: Site, page: Page) -> None:
    await sign_in(page, site, "/tokens")
    await expect(page.locator("#token-list .empty")).to_be_visible()
    await page.get_by_label("Label").fill("laptop <1>")
    await page.get_by_role("button", name="Create token").click()
    value = page.locator("#new-token-value")
    await expect(value).to_have_text(re.compile(r"^shk_\w{38}$"))
    token = await value.inner_text()
    await expect(page.locator("#token-list tbody tr")).to_have_count(1)
    await expect(page.locator("#token-list")).to_contain_text("laptop <1>")
    await page.get_by_role("button", name="Copy").click()
    await expect(page.locator('#new-token [data-action="copy"]')).to_have_text("Copied")
    assert await v1_models(site, token) == 200
    await shot(page, "tokens-en.png")

    await page.get_by_role("link", name="中文").click()
    await expect(page.locator("h1")).to_have_text("网关令牌")
    await shot(page, "tokens-zh.png")
    await page.get_by_role("link", name="English").click()

    await page.get_by_role("button", name="Revoke").click()
    await expect(page.locator("#token-list .empty")).to_be_visible()
    assert await v1_models(site, token) == 401

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(site.origin + "/")
    assert await site.session_count() == 0
    assert await page.evaluate("fetch('/api/tokens').then(r => r.status)") == 401


async def v1_models(site: Site, token: str) -> int:
    resp = await site.client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    await resp.read()
    return resp.status
